"""2.5D input (data.context_slices): neighbouring axial slices as input channels, stacked one way in
training samples, augmentation, whole-case validation, prediction and export."""

from __future__ import annotations

from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import pytest
import torch

from lightning_brats.data.context import (
    channel_names,
    check_context,
    context_indices,
    input_channels,
    stack_axial,
    stack_slice,
    stack_volume,
)
from lightning_brats.data.preprocess import CachedCase
from lightning_brats.data.sampling import Augmentation, TrainingSampleDataset
from lightning_brats.inference.sliding_window import predict_logits
from lightning_brats.models import UNet
from tests.conftest import compose_config


def _naive_stack(image: np.ndarray, z: int, k: int) -> np.ndarray:
    """The definition written out slice by slice: modality-major, offsets -k..k, border slices repeated."""
    depth = image.shape[-1]
    return np.stack([image[c, :, :, min(max(z + d, 0), depth - 1)] for c in range(image.shape[0]) for d in range(-k, k + 1)])


def _coded_volume(channels: int = 3, shape=(6, 5, 7)) -> np.ndarray:
    """``image[c, x, y, z] = 100 c + z``: a voxel's value says its modality and slice."""
    c, _, _, z = np.meshgrid(np.arange(channels), *(np.arange(n) for n in shape), indexing="ij")
    return (100 * c + z).astype(np.float32)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_stacks_equal_the_naive_loop_from_every_layout(k):
    image = np.random.default_rng(k).normal(size=(4, 6, 5, 7)).astype(np.float32)
    axial = np.ascontiguousarray(image.transpose(3, 0, 1, 2))  # the cache's slice-major copy (Z, C, X, Y)
    whole = stack_volume(torch.from_numpy(image)[None], k)[0].numpy()
    assert whole.shape == (4 * (2 * k + 1), 6, 5, 7)
    for z in range(7):
        expected = _naive_stack(image, z, k)
        np.testing.assert_array_equal(stack_slice(image, z, k), expected)
        np.testing.assert_array_equal(stack_axial(axial, z, k), expected)
        np.testing.assert_array_equal(whole[..., z], expected)


def test_channel_order_is_modality_major_and_edges_repeat_the_border_slice():
    image = _coded_volume()
    stack = stack_slice(image, 0, 2)[:, 0, 0]  # the first slice: two missing neighbours below
    np.testing.assert_array_equal(stack, [0, 0, 0, 1, 2, 100, 100, 100, 101, 102, 200, 200, 200, 201, 202])
    np.testing.assert_array_equal(stack_slice(image, 6, 1)[:, 0, 0], [5, 6, 6, 105, 106, 106, 205, 206, 206])
    np.testing.assert_array_equal(context_indices(7, 1), np.clip(np.arange(7)[:, None] + [-1, 0, 1], 0, 6))
    assert channel_names(["flair", "t1"], 1) == ["flair[z-1]", "flair[z]", "flair[z+1]", "t1[z-1]", "t1[z]", "t1[z+1]"]
    assert channel_names(["flair", "t1"], 0) == ["flair", "t1"]
    assert input_channels(["flair", "t1", "t1ce", "t2"], 2) == 20 and input_channels(4, 0) == 4
    assert stack_volume(torch.zeros(1, 2, 3, 3, 3), 0).shape == (1, 2, 3, 3, 3)
    thin = torch.arange(2.0).view(1, 2, 1, 1, 1)  # one slice, k = 2: every neighbour is that slice
    assert stack_volume(thin, 2).flatten().tolist() == [0.0] * 5 + [1.0] * 5


def test_3d_and_bad_values_are_refused_naming_the_key():
    assert check_context(1, "2d") == 1 and check_context(0, "3d") == 0
    with pytest.raises(ValueError, match=r"data.context_slices=1 needs data.sampling=2d"):
        check_context(1, "3d")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"data.context_slices=.*whole number"):
            check_context(bad)
    with pytest.raises(ValueError, match=r"data.context_slices=1 needs data.sampling=2d"):
        predict_logits(torch.nn.Identity(), torch.zeros(1, 1, 8, 8, 8), [8, 8, 8], 0.5, 1, context_slices=1)


def test_a_checkpoint_trained_with_other_context_is_refused_naming_the_key():
    from lightning_brats.training.checkpoints import check_same_channels, trained_channels

    trained = trained_channels({"hyper_parameters": {"modalities": ["flair"], "regions": ["wt"], "context_slices": 1}})
    assert trained["context_slices"] == 1
    check_same_channels(trained, {"modalities": ["flair"], "regions": ["wt"], "context_slices": 1})
    with pytest.raises(ValueError, match=r"trained with data.context_slices=1 \(3 slices per modality\), this run has "
                                         r"data.context_slices=0"):
        check_same_channels(trained, {"modalities": ["flair"], "regions": ["wt"]})
    old = trained_channels({"hyper_parameters": {"modalities": ["flair"], "regions": ["wt"]}})  # before the setting
    check_same_channels(old, {"modalities": ["flair"], "regions": ["wt"], "context_slices": 0})


def test_3d_datamodule_and_module_refuse_context(tmp_path):
    cfg = compose_config(["data=sample", f"data.root={tmp_path}", "data.context_slices=1"], tmp_path)
    with pytest.raises(Exception, match=r"data.context_slices=1 needs data.sampling=2d"):
        hydra.utils.instantiate(cfg.data)
    with pytest.raises(Exception, match=r"data.context_slices=1 needs data.sampling=2d"):
        hydra.utils.instantiate(cfg.model)


def test_the_configs_give_the_network_modalities_times_2k_plus_1_inputs(tmp_path):
    cfg = compose_config(
        ["experiment=brats_cpu", f"data.root={tmp_path}", "data.context_slices=2"], tmp_path
    )
    module = hydra.utils.instantiate(cfg.model)
    first = next(m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == module.in_channels == 4 * 5 and module.context_slices == 2
    assert module.hparams.context_slices == 2
    info = module.describe_network()
    assert info["model/input_shape"] == [16, 20, 96, 96] and info["model/output_shape"] == [16, 3, 96, 96]


def test_a_network_built_for_other_channels_is_named_before_training(tmp_path):
    cfg = compose_config(["experiment=brats_cpu", f"data.root={tmp_path}", "data.context_slices=1",
                          "model.net.in_channels=4"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    with pytest.raises(ValueError, match=r"does not take 12 input channels \(4 data.preprocessing.modalities x 3 slices, "
                                         r"data.context_slices=1\).*model.net.in_channels"):
        module.describe_network()
    assert module.net.training  # left as it was


def _cases() -> list[CachedCase]:
    image = _coded_volume(channels=2, shape=(12, 12, 9))
    label = np.zeros((12, 12, 9), np.uint8)
    label[4:8, 4:8, 2:7] = 1
    axial = np.ascontiguousarray(image.transpose(3, 0, 1, 2))
    return [CachedCase("c", image, label, {}, axial, np.ascontiguousarray(label.transpose(2, 0, 1)))]


@pytest.mark.parametrize("slice_major", [True, False])
def test_training_samples_hold_the_neighbours_of_their_slice(slice_major):
    cases = _cases()
    if not slice_major:
        cases = [CachedCase(c.case_id, c.image, c.label, {}) for c in cases]
    plain = TrainingSampleDataset(cases, {"wt": [1]}, (8, 8), batch_size=4, augment=None, seed=3)
    context = TrainingSampleDataset(cases, {"wt": [1]}, (8, 8), batch_size=4, augment=None, seed=3, context_slices=1)
    for index in range(12):
        a, b = plain[(0, index)], context[(0, index)]
        assert b["image"].shape == (6, 8, 8) and b["target"].shape == a["target"].shape == (1, 8, 8)
        torch.testing.assert_close(b["image"][1::3], a["image"])  # the centre slices: the plain 2D sample
        torch.testing.assert_close(b["target"], a["target"])  # the same draw: the target is slice z's
        z = int(a["image"][0].max())  # the coded volume: channel c of slice z holds 100 c + z inside the patch
        inside = a["image"][0] == z
        for c in range(2):
            got = b["image"][3 * c: 3 * c + 3][:, inside].amax(dim=1).tolist()
            assert got == [100 * c + min(max(z + d, 0), 8) for d in (-1, 0, 1)]
    with pytest.raises(ValueError, match="data.context_slices=1 needs data.sampling=2d"):
        TrainingSampleDataset(cases, {"wt": [1]}, (8, 8, 8), batch_size=4, context_slices=1)


@pytest.mark.parametrize("device", ["cpu", "batch"])
def test_datamodule_2d_batches_carry_the_context_channels(phantom_root, tmp_path, device):
    cfg = compose_config(["data=sample", f"data.root={phantom_root}", "data.sampling=2d", "data.patch_size=[32,32]",
                          "data.context_slices=1", "data.batch_size=4", "data.samples_per_epoch=8",
                          f"data.augment.device={device}"], tmp_path, tmp_path / "cache")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    batch = datamodule.on_after_batch_transfer(datamodule.on_before_batch_transfer(batch, 0), 0)
    assert batch["image"].shape == (4, 12, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["target"].shape == (4, 3, 32, 32)
    case = next(iter(datamodule.val_dataloader()))  # whole cases stay one channel per modality: validation stacks
    assert case["image"].shape[:2] == (1, 4) and case["image"].ndim == 5


INTENSITY = {"blur_prob": 1.0, "brightness_prob": 1.0, "contrast_prob": 1.0, "low_res_prob": 1.0,
             "inverted_gamma_prob": 0.5, "gamma_prob": 1.0}


def _same_slices_sample(k: int, seed: int = 0) -> np.ndarray:
    """A ``(2 * (2k + 1), 24, 24)`` 2.5D sample whose neighbouring slices equal their centre slice, with a
    zero background border."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(2, 24, 24)).astype(np.float32) + np.array([2.0, -1.0], np.float32)[:, None, None]
    centre[:, :3] = 0
    return np.repeat(centre, 2 * k + 1, axis=0)


def test_cpu_augmentation_gives_a_modalitys_neighbours_the_same_draw():
    k = 1
    augment = Augmentation(spatial_prob=1.0, **INTENSITY)
    for seed in range(6):
        image = _same_slices_sample(k, seed)
        out, _ = augment(image, np.zeros((1, 24, 24), np.float32), np.random.default_rng(seed), context_slices=k)
        groups = out.reshape(2, 3, 24, 24)
        np.testing.assert_allclose(groups, np.repeat(groups[:, 1:2], 3, axis=1), atol=1e-5)  # identical slices stay so
        assert not np.allclose(groups[0, 1], image[1]), "the augmentation changed nothing"
        # the per-modality draws are the plain sample's: k does not change the random stream
        plain, _ = augment(image[1::3].copy(), np.zeros((1, 24, 24), np.float32), np.random.default_rng(seed))
        np.testing.assert_allclose(groups[:, 1], plain, atol=1e-4)


def test_batch_augmentation_gives_a_modalitys_neighbours_the_same_draw():
    from lightning_brats.data.batch_augment import BatchAugmentation

    k = 2
    image = torch.from_numpy(np.stack([_same_slices_sample(k, s) for s in range(4)]))
    labels = torch.zeros(4, 1, 24, 24, dtype=torch.uint8)
    out, _ = BatchAugmentation(spatial_prob=1.0, **INTENSITY)(image, labels, torch.Generator().manual_seed(0), k)
    groups = out.view(4, 2, 5, 24, 24)
    torch.testing.assert_close(groups, groups[:, :, 2:3].expand_as(groups), atol=1e-5, rtol=0)
    assert not torch.allclose(groups[:, :, 2], image.view(4, 2, 5, 24, 24)[:, :, 2])
    # noise: one field per slice, shared by the modalities (as one field per voxel of a 3D sample)
    noisy, _ = BatchAugmentation(flip=False, intensity=False, spatial_prob=0.0, noise_prob=1.0)(
        image, labels, torch.Generator().manual_seed(0), k)
    noise = (noisy - image).view(4, 2, 5, 24, 24)[..., 3:, :]  # inside the "brain"
    assert not torch.allclose(noise[:, 0, 0], noise[:, 0, 1])
    torch.testing.assert_close(noise[:, 0], noise[:, 1], atol=1e-5, rtol=0)
    assert (noisy.view(4, 10, 24, 24)[:, :, :3] == 0).all()  # the background stays 0


def _net(k: int, channels: int = 2) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=input_channels(channels, k), out_channels=3, depth=3, base_filters=4).eval()


@pytest.mark.parametrize("k", [1, 2])
def test_whole_case_logits_are_the_networks_on_each_slices_stack(k):
    """Validation and prediction (predict_logits) give slice z the logits of the network on slice z's stack."""
    image = torch.randn(1, 2, 16, 16, 7)
    net = _net(k)
    with torch.no_grad():
        logits = predict_logits(net, image, [16, 16], 0.5, 3, context_slices=k)
        assert logits.shape == (1, 3, 16, 16, 7)
        for z in (0, 3, 6):
            expected = net(torch.from_numpy(stack_slice(image[0].numpy(), z, k))[None])
            torch.testing.assert_close(logits[..., z], expected, atol=1e-5, rtol=1e-5)


def test_validation_step_runs_a_25d_network_on_whole_cases(tmp_path):
    cfg = compose_config(["experiment=brats_cpu", f"data.root={tmp_path}", "data.context_slices=1",
                          "data.patch_size=[32,32]", "model.net.base_filters=4"], tmp_path)
    module = hydra.utils.instantiate(cfg.model).eval()
    target = torch.zeros(1, 3, 32, 32, 9)
    target[:, :, 10:20, 10:20, 3:6] = 1
    with torch.no_grad():
        out = module.validation_step({"image": torch.randn(1, 4, 32, 32, 9), "target": target}, 0)
    assert out["pred"].shape == target.shape and out["pred"].dtype == torch.bool
    assert 0 <= float(module.val_dice.compute().mean()) <= 1


def _phantom_case(root: Path):
    from lightning_brats.data.phantoms import write_phantom_dataset

    (folder,) = write_phantom_dataset(root, num_cases=1, shape=(40, 40, 24))
    return folder


@pytest.mark.slow  # a checkpoint predicted and exported: over a second of the quick loop
def test_a_25d_checkpoint_predicts_and_exports_with_12_input_channels(tmp_path):
    """An untrained 2.5D checkpoint as train.py stores it: predict.py's Predictor gives a label map of the
    case's shape, and the ONNX file takes 12 channels, says so in its metadata and predicts the same."""
    from lightning_brats.data.readers import make_reader
    from lightning_brats.inference.export import export_model, load_exported_model
    from lightning_brats.inference.prediction import Predictor, load_trained_model
    from tests.conftest import inference_settings, require_export_extra
    from tests.test_export import _tiny_checkpoint

    require_export_extra()

    ckpt = _tiny_checkpoint("unet2d", 2, ["model.net.depth=3", "model.net.base_filters=4", "data.context_slices=1"], tmp_path)
    model = load_trained_model(ckpt, device="cpu")
    assert model.context_slices == 1 and model.in_channels == 12
    folder = _phantom_case(tmp_path / "data")
    files = make_reader(model.data["release"]["layout"]).find_cases(folder)[0]
    settings = inference_settings(precision="32", overlap=0.25, sw_batch_size=8, flip_tta=True)
    result = Predictor(model, settings).predict_case(files)
    label_shape = nib.load(next(folder.glob("*_seg.nii.gz"))).shape
    assert result.label.shape == label_shape and result.probabilities.shape == (3, *label_shape)

    path, metadata = export_model(ckpt, fmt="onnx")
    assert metadata["context_slices"] == 1 and len(metadata["input"]["channels"]) == 12
    assert metadata["input"]["channels"][:3] == ["flair[z-1]", "flair[z]", "flair[z+1]"]
    import onnxruntime as ort

    (onnx_input,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert onnx_input.shape[1] == 12
    exported = load_exported_model(path, device="cpu")
    assert exported.context_slices == 1 and exported.in_channels == 12
    again = Predictor(exported, settings).predict_case(files)
    np.testing.assert_allclose(again.probabilities, result.probabilities, atol=1e-4)
    # an ensemble may mix plain 2D and 2.5D members: each stacks its own input
    (tmp_path / "plain").mkdir()
    plain = load_trained_model(_tiny_checkpoint("unet2d", 2, ["model.net.depth=3", "model.net.base_filters=4"],
                                                tmp_path / "plain"), device="cpu")
    quick = inference_settings(precision="32", overlap=0.25, sw_batch_size=8, flip_tta=False)
    alone, first = (Predictor(m, quick).predict_case(files) for m in (plain, model))
    both = Predictor([model, plain], quick).predict_case(files)
    np.testing.assert_allclose(both.probabilities, (first.probabilities + alone.probabilities) / 2, atol=1e-5)


@pytest.mark.slow
def test_25d_training_then_predict_py_end_to_end(phantom_checkpoint_25d, phantom_root, tmp_path):
    """train.py with data.context_slices=1 (augmentation, whole-case validation, checkpoint), then predict.py
    from the checkpoint alone (no context flag): a label map on the input grid."""
    from lightning_brats.cli.predict import predict
    from lightning_brats.training.checkpoints import load_checkpoint
    from tests.conftest import compose_tool_config

    checkpoint = load_checkpoint(phantom_checkpoint_25d)
    assert checkpoint["hyper_parameters"]["context_slices"] == 1
    first_conv = next(w for w in checkpoint["state_dict"].values() if w.ndim == 4)  # (out, in, kx, ky)
    assert first_conv.shape[1] == 12
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    out = tmp_path / "pred"
    predict(compose_tool_config("predict", [f"ckpt_path={phantom_checkpoint_25d}", f"input={case}",
                                            f"output_dir={out}", "inference.flip_tta=false"], out / "run"))
    (written,) = out.glob("*.nii.gz")
    assert nib.load(written).shape == nib.load(next(case.glob("*_seg.nii.gz"))).shape
