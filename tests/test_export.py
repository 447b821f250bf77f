"""lightning-brats export: ONNX and TorchScript files that segment like their checkpoint.

The checkpoint is the phantom-trained 3D U-Net of the session (``phantom_checkpoint``): any
weights serve to check that the exported file computes the same probabilities. The model-zoo
variants are built from their configs with tiny sizes, untrained."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from lightning_brats.cli.export import export
from lightning_brats.cli.predict import predict
from lightning_brats.data.readers import make_reader
from lightning_brats.inference.export import (
    ExportError,
    export_model,
    load_exported_model,
    read_metadata,
    sidecar_path,
)
from lightning_brats.inference.prediction import Predictor, load_trained_model
from lightning_brats.training.module import CONFIG_KEY
from tests.conftest import MODEL_VARIANTS as VARIANTS
from tests.conftest import compose_config, compose_tool_config, inference_settings, require_export_extra


@pytest.fixture(autouse=True)
def _export_extra():
    """The ``export`` extra is part of the test install (.ci/run); missing, the tests fail saying so."""
    require_export_extra()


@pytest.fixture(scope="module")
def exported(phantom_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The session's phantom checkpoint (copied) and its ONNX and TorchScript exports."""
    folder = tmp_path_factory.mktemp("exported")
    ckpt = folder / "model.ckpt"
    ckpt.write_bytes(phantom_checkpoint.read_bytes())
    files = {"ckpt": ckpt}
    for fmt in ("onnx", "torchscript"):
        path, _ = export(compose_tool_config("export", [f"ckpt_path={ckpt}", f"format={fmt}"], folder / "run"))
        files[fmt] = path
    return files


@pytest.mark.slow
def test_export_writes_the_file_and_its_metadata_beside_the_checkpoint(exported):
    ckpt = exported["ckpt"]
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)[CONFIG_KEY]["data"]
    # the metadata keeps the flat keys of its format: the release's and the plan's beside the window's
    stored = {**stored, **stored["release"], **stored["preprocessing"]}
    assert exported["onnx"] == ckpt.with_suffix(".onnx") and exported["torchscript"] == ckpt.with_suffix(".pt")
    import onnx

    props = {p.key: json.loads(p.value) for p in onnx.load(str(exported["onnx"])).metadata_props}
    for fmt in ("onnx", "torchscript"):
        sidecar = json.loads(sidecar_path(exported[fmt]).read_text())
        inside = props if fmt == "onnx" else read_metadata(exported[fmt])
        for meta in (sidecar, inside):
            assert meta["format"] == fmt and meta["spatial_dims"] == 3 and meta["dynamic_spatial"] is True
            for key in ("modalities", "spacing", "normalization", "crop", "crop_size", "patch_size", "regions", "labels"):
                assert meta[key] == stored[key], key
            assert meta["threshold"] == 0.5 and meta["inference"]["flip_tta"] is True
            assert meta["input"]["channels"] == ["flair", "t1", "t1ce", "t2"] and meta["output"]["channels"] == ["wt", "tc", "et"]
        # the file's own metadata is the sidecar's, less the verification done after writing it
        assert {k: v for k, v in sidecar.items() if k != "verified"} == inside
        assert [c["size"] for c in sidecar["verified"]] == [[32, 32, 32], [40, 40, 40]]  # patch, patch + 2**(depth-1)
        assert all(c["max_abs_diff"] < 1e-4 for c in sidecar["verified"])
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.real_data
@pytest.mark.slow
def test_exported_probabilities_match_the_checkpoints_on_a_real_case(exported, brats2018_root):
    """Whole-case probabilities (preprocessing, Gaussian sliding window, back to the original
    grid) of the ONNX and TorchScript files equal the checkpoint's to 1e-4 in fp32."""
    files = make_reader(load_trained_model(exported["ckpt"], device="cpu").release.layout).find_cases(brats2018_root)
    case = files[0]

    def probabilities(model):
        # 2 mm: the phantoms' voxel size the network was trained at, and a quick test
        model.data["preprocessing"]["spacing"] = [2.0, 2.0, 2.0]
        return Predictor(model, inference_settings(precision="32", overlap=0.25, sw_batch_size=8, flip_tta=False)).predict_case(case).probabilities

    reference = probabilities(load_trained_model(exported["ckpt"], device="cpu"))
    assert reference.shape == (3, 240, 240, 155) and reference.std() > 1e-3  # not a constant output
    for fmt in ("onnx", "torchscript"):
        got = probabilities(load_exported_model(exported[fmt], device="cpu"))
        assert np.abs(got - reference).max() < 1e-4, fmt


@pytest.mark.slow
def test_exported_files_run_other_window_sizes_and_flip_tta(exported, phantom_root):
    """Dynamic spatial axes: the same files slide windows of two other sizes (flip TTA on the first)."""
    case_dir = min(p for p in phantom_root.iterdir() if p.is_dir())
    model = load_trained_model(exported["ckpt"], device="cpu")
    case = make_reader(model.release.layout).find_cases(case_dir)[0]
    for patch, tta in (([48, 40, 32], True), ([24, 32, 16], False)):
        model.data["patch_size"] = patch
        reference = Predictor(model, inference_settings(precision="32", overlap=0.25, flip_tta=tta, sw_batch_size=4)).predict_case(case).probabilities
        for fmt in ("onnx", "torchscript")[: 1 if tta else 2]:
            other = load_exported_model(exported[fmt], device="cpu")
            other.data["patch_size"] = patch
            assert np.abs(Predictor(other, inference_settings(precision="32", overlap=0.25, flip_tta=tta, sw_batch_size=4)).predict_case(case).probabilities - reference).max() < 1e-4


@pytest.mark.slow
def test_predict_py_runs_an_exported_file_like_the_checkpoint(exported, phantom_root, tmp_path):
    """``exported=`` needs no checkpoint: the labels (threshold, nesting, post-processing) equal
    the checkpoint's, and the exported files pass the release check (data=lgg's channels differ)."""
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    exported["ckpt"].rename(exported["ckpt"].with_suffix(".moved"))  # the deployment has no checkpoint
    try:
        labels = {}
        for name, source in (("onnx", f"exported={exported['onnx']}"), ("pt", f"exported={exported['torchscript']}")):
            out = tmp_path / name
            predict(compose_tool_config("predict", [source, f"input={case}", f"output_dir={out}", "inference.flip_tta=false", "inference.precision=32"], out))
            labels[name] = np.asarray(nib.load(out / f"{case.name}.nii.gz").dataobj)
        with pytest.raises(ValueError, match=r"model.onnx: the checkpoint does not fit this model: input channels"):
            predict(compose_tool_config("predict", [f"exported={exported['onnx']}", f"input={case}", "data=lgg"], tmp_path))
    finally:
        exported["ckpt"].with_suffix(".moved").rename(exported["ckpt"])
    out = tmp_path / "ckpt"
    predict(compose_tool_config("predict", [f"ckpt_path={exported['ckpt']}", f"input={case}", f"output_dir={out}", "inference.flip_tta=false", "inference.precision=32"], out))
    reference = np.asarray(nib.load(out / f"{case.name}.nii.gz").dataobj)
    assert (reference > 0).any()
    np.testing.assert_array_equal(labels["onnx"], reference)
    np.testing.assert_array_equal(labels["pt"], reference)


@pytest.mark.slow
def test_export_refusals(exported, tmp_path):
    ckpt = exported["ckpt"]
    with pytest.raises(ValueError, match=r"format='keras': expected one of \['onnx', 'torchscript'\]"):
        export_model(ckpt, fmt="keras")
    with pytest.raises(ValueError, match=rf"output={exported['onnx']} exists; overwrite=true replaces it"):
        export_model(ckpt, fmt="onnx")
    with pytest.raises(ValueError, match=r"must end in \.pt"):
        export_model(ckpt, fmt="torchscript", output=tmp_path / "model.onnx")
    plain = tmp_path / "plain.onnx"  # an ONNX file from elsewhere, without our metadata
    torch.onnx.export(torch.nn.Conv3d(4, 3, 1), (torch.zeros(1, 4, 8, 8, 8),), str(plain), dynamo=False)
    with pytest.raises(ValueError, match=r"plain.onnx: no lightning-brats metadata \['modalities', 'regions', 'patch_size'\]"):
        load_exported_model(plain)
    with pytest.raises(ValueError, match=r"model.ckpt: expected a .onnx \(onnxruntime\) or .pt"):
        load_exported_model(ckpt)


def _tiny_checkpoint(name: str, dims: int, overrides: list[str], folder: Path) -> Path:
    """An untrained checkpoint of a ``model=`` variant, as train.py stores it (config + weights)."""
    patch = [64, 64, 64] if name == "swinunetr" else [16, 16, 16] if dims == 3 else [32, 32]
    sampling = [] if dims == 3 else ["data.sampling=2d"]
    cfg = compose_config(
        [f"model={name}", "data=sample", "data.root=unused", f"data.patch_size=[{','.join(map(str, patch))}]", *sampling, *overrides],
        folder,
    )
    net = hydra.utils.instantiate(cfg.model.net)
    config = {"data": OmegaConf.to_container(cfg.data, resolve=True), "model": OmegaConf.to_container(cfg.model, resolve=True)}
    path = folder / f"{name}.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, CONFIG_KEY: config,
                "pytorch-lightning_version": pl.__version__}, path)
    return path


#: The plain U-Nets export in the quick loop; the other variants (seconds each) with the slow tests. The
#: CPU-size configs (``*_cpu``) build the same classes as their full-size configs, which export here.
CONV_VARIANTS = [pytest.param(*v, id=v[0], marks=() if v[0] in ("unet2d", "unet3d") else pytest.mark.slow)
                 for v in VARIANTS if v[0] != "swinunetr" and not v[0].endswith("_cpu")]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name,dims,overrides", CONV_VARIANTS)
def test_every_convolutional_variant_exports_with_dynamic_sizes(name, dims, overrides, fmt, tmp_path):
    ckpt = _tiny_checkpoint(name, dims, overrides, tmp_path)
    path, metadata = export_model(ckpt, fmt=fmt)
    # 2**(depth-1); SegResNet, DynUNet [8,16,32,64] and ResEnc with 4 stages: 8; MedNeXt with 2 downsamplings: 4
    divisor = {"unet2d_ds": 8, "unet3d_ds": 8, "segresnet": 8, "dynunet": 8, "resencunet2d": 8, "resencunet3d": 8}.get(name, 4)
    patch = [16, 16, 16] if dims == 3 else [32, 32]
    assert [c["size"] for c in metadata["verified"]] == [patch, [p + divisor for p in patch]]
    assert metadata["spatial_dims"] == dims and path.is_file()
    # an independent run at a third size, batch 3, against the network itself
    net = load_trained_model(ckpt, device="cpu").net
    x = torch.randn(3, 4, *[p + 2 * divisor for p in patch])
    with torch.no_grad():
        torch.testing.assert_close(load_exported_model(path, device="cpu").net(x), net(x), atol=1e-4, rtol=0)


def test_a_fixed_size_export_runs_at_the_patch_size_only(tmp_path):
    ckpt = _tiny_checkpoint("unet3d", 3, ["model.net.depth=3", "model.net.base_filters=8"], tmp_path)
    path, metadata = export_model(ckpt, fmt="onnx", dynamic=False)
    assert metadata["dynamic_spatial"] is False and [c["size"] for c in metadata["verified"]] == [[16, 16, 16]]
    net = load_exported_model(path, device="cpu").net
    assert net(torch.zeros(3, 4, 16, 16, 16)).shape == (3, 3, 16, 16, 16)  # the batch stays dynamic
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        net(torch.zeros(1, 4, 24, 16, 16))


@pytest.mark.slow
def test_swinunetr_refuses_dynamic_sizes_saying_why(tmp_path):
    """MONAI's SwinUNETR bakes the traced size into its shifted-window attention mask (the second
    block of a stage): the dynamic export is refused with the reason and the fix (dynamic=false),
    and nothing is left behind. About 10 s of CPU: the smallest SwinUNETR takes 64^3 patches."""
    ckpt = _tiny_checkpoint("swinunetr", 3, ["model.net.feature_size=12", "model.net.depths=[2,1,1,1]"], tmp_path)
    with pytest.raises(ExportError, match=r"does not run at spatial size \[96, 96, 96\] \(traced at \[64, 64, 64\]\).*dynamic=false"):
        export_model(ckpt, fmt="onnx")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".ckpt" and p.is_file()) == []
