"""predict.py: label maps on the input grid with the release's codes, flip TTA, skip/overwrite,
and refusals (overwriting an input, bad input, a checkpoint for other channels).

The fast tests use checkpoints trained for one short epoch on phantoms; the real-data tests
reuse the brats_cpu model trained once per session (``trained_brats_run``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from lightning_brats.cli.eval import evaluate
from lightning_brats.cli.predict import predict
from lightning_brats.data.readers import DataError
from lightning_brats.inference.sliding_window import flip_axes_combinations, predict_probabilities
from tests.conftest import BRATS_MODALITIES, compose_tool_config


def _predict(ckpt: Path, out: Path, *overrides: str) -> dict:
    return predict(compose_tool_config("predict", [f"ckpt_path={ckpt}", f"output_dir={out}", *overrides], out / "run"))


def _assert_same_grid(output: Path, reference: Path) -> nib.Nifti1Image:
    img, ref = nib.load(output), nib.load(reference)
    assert img.shape[:3] == ref.shape[:3]
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    assert int(img.header["sform_code"]) == int(ref.header["sform_code"])
    assert int(img.header["qform_code"]) == int(ref.header["qform_code"])
    np.testing.assert_allclose(img.header.get_zooms()[:3], ref.header.get_zooms()[:3])
    return img


class _Counting(nn.Module):
    """A network that is not flip-equivariant (a random 3x3 conv), counting its forward passes."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv, self.calls = conv, 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x)


@pytest.mark.parametrize("dims", [3, 2])
def test_flip_tta_averages_every_flip(dims):
    torch.manual_seed(0)
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(4, 3, 3, padding=1)
    net = _Counting(conv).eval()
    image = torch.randn(1, 4, 16, 12, 6)
    patch = [16, 12, 6][:dims]  # one window: the flipped case sees the same window positions
    batch = 6  # in 2D all six slices go through at once, so calls == flip passes
    assert len(set(flip_axes_combinations(dims))) == 2**dims
    with torch.no_grad():
        plain = predict_probabilities(net, image, patch, overlap=0.5, sw_batch_size=batch)
        net.calls = 0
        tta = predict_probabilities(net, image, patch, overlap=0.5, sw_batch_size=batch, flip_tta=True)
        assert net.calls == 2**dims  # 8 passes in 3D, 4 in 2D
        for axis in range(2, 2 + dims):  # the average over all flips commutes with any flip
            flipped = predict_probabilities(net, torch.flip(image, (axis,)), patch, overlap=0.5, sw_batch_size=batch, flip_tta=True)
            torch.testing.assert_close(torch.flip(flipped, (axis,)), tta, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(torch.flip(predict_probabilities(net, torch.flip(image, (2,)), patch, overlap=0.5, sw_batch_size=batch), (2,)), plain, atol=1e-3)
    assert tta.shape == (1, 3, 16, 12, 6) and 0 <= tta.min() and tta.max() <= 1


@pytest.mark.slow
def test_predict_case_folder_on_the_input_grid_then_skip_and_overwrite(phantom_checkpoint, phantom_root, tmp_path):
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    result = _predict(phantom_checkpoint, tmp_path / "out", f"input={case}", "save_probabilities=true", "inference.flip_tta=false")
    assert result["cases"] == [case.name] and result["predicted"] == 1
    output = tmp_path / "out" / f"{case.name}.nii.gz"
    img = _assert_same_grid(output, case / f"{case.name}_flair.nii.gz")
    label = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.uint8 and set(np.unique(label)) <= {0, 1, 2, 4}
    probs = nib.load(tmp_path / "out" / f"{case.name}_probabilities.nii.gz")
    assert probs.shape == (*label.shape, 3) and probs.get_data_dtype() == np.float32
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left
    # a second run skips the case; overwrite=true predicts it again
    mtime = output.stat().st_mtime_ns
    again = _predict(phantom_checkpoint, tmp_path / "out", f"input={case}", "inference.flip_tta=false")
    assert again["skipped"] == 1 and again["predicted"] == 0 and output.stat().st_mtime_ns == mtime
    forced = _predict(phantom_checkpoint, tmp_path / "out", f"input={case}", "inference.flip_tta=false", "overwrite=true")
    assert forced["predicted"] == 1


@pytest.mark.slow
def test_2d_checkpoint_predicts_explicit_files_slice_by_slice(phantom_checkpoint_2d, phantom_root, tmp_path):
    case = sorted(p for p in phantom_root.iterdir() if p.is_dir())[1]
    files = ",".join(f"{m}:{case / f'{case.name}_{m}.nii.gz'}" for m in BRATS_MODALITIES)
    result = _predict(phantom_checkpoint_2d, tmp_path, f"files={{{files}}}", "inference.flip_tta=true")
    # the case is named by what the file names share
    assert result["cases"] == [case.name]
    img = _assert_same_grid(tmp_path / f"{case.name}.nii.gz", case / f"{case.name}_t1.nii.gz")
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2, 4}


@pytest.mark.slow
def test_predict_never_overwrites_an_input_file(phantom_checkpoint, phantom_root, tmp_path):
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for m in BRATS_MODALITIES:  # the FLAIR file is named like the output would be
        name = "scan.nii.gz" if m == "flair" else f"scan_{m}.nii.gz"
        (inputs / name).write_bytes((case / f"{case.name}_{m}.nii.gz").read_bytes())
    before = (inputs / "scan.nii.gz").read_bytes()
    files = ",".join(f"{m}:{inputs / ('scan.nii.gz' if m == 'flair' else f'scan_{m}.nii.gz')}" for m in BRATS_MODALITIES)
    with pytest.raises(ValueError, match=rf"output {inputs / 'scan.nii.gz'} would overwrite an input file of case scan"):
        _predict(phantom_checkpoint, inputs, f"files={{{files}}}", "case_id=scan")
    assert (inputs / "scan.nii.gz").read_bytes() == before


@pytest.mark.slow
def test_predict_input_errors(phantom_checkpoint, phantom_root, tmp_path):
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    with pytest.raises(ValueError, match=r"give one of input="):
        _predict(phantom_checkpoint, tmp_path)
    with pytest.raises(DataError, match=rf"input={case / f'{case.name}_t1.nii.gz'} is a file"):
        _predict(phantom_checkpoint, tmp_path, f"input={case / f'{case.name}_t1.nii.gz'}")
    with pytest.raises(DataError, match=r"files= lacks modality \['t1ce', 't2'\]"):
        _predict(phantom_checkpoint, tmp_path, f"files={{flair:{case}/{case.name}_flair.nii.gz,t1:{case}/{case.name}_t1.nii.gz}}")
    with pytest.raises(DataError, match=r"no cases found under .*empty"):
        (tmp_path / "empty").mkdir()
        _predict(phantom_checkpoint, tmp_path, f"input={tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nothing.ckpt: no such checkpoint"):
        _predict(tmp_path / "nothing.ckpt", tmp_path, f"input={case}")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match=r"plain.ckpt: not a lightning-brats checkpoint"):
        _predict(tmp_path / "plain.ckpt", tmp_path, f"input={case}")
    # a release whose channels differ from the network's (the LGG set: 3 modalities, 1 region)
    with pytest.raises(ValueError, match=r"input channels: trained on .*output channels: trained for the regions \['wt', 'tc', 'et'\]"):
        _predict(phantom_checkpoint, tmp_path, f"input={case}", "data=lgg")


@pytest.fixture(scope="module")
def held_out_root(trained_brats_run, brats2018_root, tmp_path_factory) -> Path:
    """Two of the session model's held-out real cases, linked into a temporary dataset root."""
    run, _ = trained_brats_run
    val = json.loads((run / "splits.json").read_text())["folds"][0]["val"][:2]
    root = tmp_path_factory.mktemp("held_out")
    for case in val:
        (root / case).symlink_to(brats2018_root / case)
    return root


@pytest.mark.slow
@pytest.mark.real_data
def test_checkpoint_segments_held_out_real_cases_and_scores_them(trained_brats_run, held_out_root, tmp_path):
    """eval.py with ckpt_path predicts (flip TTA, post-processing) then scores: labels on the
    input grid, BraTS 2018 codes, ET inside TC inside WT as the region probabilities say."""
    run, _ = trained_brats_run
    cfg = compose_tool_config(
        "eval", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"ground_truth={held_out_root}", "logger=csv",
                 "save_probabilities=true"],
        tmp_path,
    )
    result = evaluate(cfg)
    for case in sorted(p.name for p in held_out_root.iterdir()):
        img = _assert_same_grid(tmp_path / "predictions" / f"{case}.nii.gz", held_out_root / case / f"{case}_flair.nii.gz")
        label = np.asarray(img.dataobj)
        assert set(np.unique(label)) <= {0, 1, 2, 4} and (label > 0).any()
        probs = np.asarray(nib.load(tmp_path / "predictions" / f"{case}_probabilities.nii.gz").dataobj)
        wt = probs[..., 0] > 0.5
        tc = wt & (probs[..., 1] > 0.5)
        et = tc & (probs[..., 2] > 0.5)
        np.testing.assert_array_equal(label > 0, wt)  # WT as predicted
        np.testing.assert_array_equal(np.isin(label, [1, 4]), tc)  # TC cut to WT
        assert not (label == 4)[~et].any()  # ET cut to TC; post-processing only turns ET into NCR
        assert (label[et & (label != 4)] == 1).all()
    dice_wt = [row["dice_wt"] for row in result["rows"]]
    # 300 training steps at 2 mm, scored at 1 mm on the original grid
    assert min(dice_wt) > 0.5, result["rows"]
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "summary.csv").is_file()


@pytest.mark.slow
@pytest.mark.real_data
def test_brats2018_model_predicts_the_brats2023_case_in_2023_codes(trained_brats_run, tmp_path):
    """data=brats23 swaps the release (t1n/t1c/t2w/t2f files, ET code 3); the preprocessing stays
    the checkpoint's."""
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / "brats2023_unlabeled"
    assert root.is_dir(), f"real data missing: {root}"
    run, _ = trained_brats_run
    result = _predict(run / "checkpoints" / "last.ckpt", tmp_path, f"input={root}", "data=brats23", "inference.flip_tta=false")
    assert result["cases"] == ["BraTS-GLI-00001-000"]
    img = _assert_same_grid(tmp_path / "BraTS-GLI-00001-000.nii.gz", root / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t2f.nii.gz")
    label = np.asarray(img.dataobj)
    assert set(np.unique(label)) <= {0, 1, 2, 3}
    assert np.count_nonzero(label) > 1000  # it finds a tumour (>1 mL) in the 2023 case


@pytest.mark.slow
@pytest.mark.real_data
def test_held_out_cases_come_from_the_checkpoints_run_folder(trained_brats_run, tmp_path):
    from lightning_brats.cli.eval import held_out_cases

    run, _ = trained_brats_run
    expected = json.loads((run / "splits.json").read_text())["folds"][0]["val"]
    assert held_out_cases(run / "checkpoints" / "last.ckpt") == sorted(expected) and len(expected) == 4
    (tmp_path / "checkpoints").mkdir()
    moved = tmp_path / "checkpoints" / "last.ckpt"
    moved.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(DataError, match=rf"cases=held_out: no {tmp_path / 'splits.json'}"):
        held_out_cases(moved)
    # a checkpoint outside checkpoints/ (SLURM's hpc_ckpt_<n>.ckpt in the run folder) finds the run's folds beside it
    (run / "hpc_ckpt_1.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    try:
        assert held_out_cases(run / "hpc_ckpt_1.ckpt") == sorted(expected)
    finally:
        (run / "hpc_ckpt_1.ckpt").unlink()


def test_run_dir_of_a_checkpoint(tmp_path):
    from lightning_brats.training.checkpoints import run_dir_of

    assert run_dir_of(tmp_path / "run" / "checkpoints" / "epoch_003.ckpt") == tmp_path / "run"
    assert run_dir_of(tmp_path / "run" / "hpc_ckpt_2.ckpt") == tmp_path / "run"
    assert run_dir_of(tmp_path / "models" / "fold0.ckpt") == tmp_path / "models"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "link.ckpt").symlink_to(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert run_dir_of(tmp_path / "link.ckpt") == tmp_path / "run"  # a link resolves to its run


@pytest.mark.slow
@pytest.mark.real_data
def test_2d_lgg_model_predicts_a_patient_as_nifti(lgg_root, cache_dir, tmp_path):
    """The LGG TIFF slices (no NIfTI header) give a NIfTI label map of the patient's slice stack in
    the mask's code (255), with the nominal spacing as its affine; ET post-processing does not apply."""
    from lightning_brats.cli.train import train
    from tests.conftest import compose_config

    run = tmp_path / "run"
    train(compose_config(
        ["experiment=lgg_cpu", f"data.root={lgg_root}", "logger=csv", "data.samples_per_epoch=32", "data.patch_size=[64,64]",
         "data.spacing=[4,4,1]", "model.net.base_filters=8", "model.net.depth=3", "trainer.max_epochs=1",
         "trainer.max_time=null", "trainer.check_val_every_n_epoch=1", "validate_best=false", "data.max_val_cases=1"],
        run, cache_dir,
    ))
    patient = min(p for p in lgg_root.iterdir() if p.is_dir())
    slices = len([p for p in patient.glob("*.tif") if not p.name.endswith("_mask.tif")])
    result = _predict(run / "checkpoints" / "last.ckpt", tmp_path / "out", f"input={patient}", "inference.flip_tta=true")
    assert result["cases"] == [patient.name]
    img = nib.load(tmp_path / "out" / f"{patient.name}.nii.gz")
    assert img.shape == (256, 256, slices)
    np.testing.assert_allclose(img.header.get_zooms()[:3], (1.0, 1.0, 1.0))  # data=lgg's nominal spacing
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 255}


@pytest.mark.slow
def test_labels_made_in_the_crop_box_equal_labels_made_on_the_whole_grid(phantom_checkpoint, phantom_root):
    """predict_case thresholds, nests and post-processes inside the crop box: the same labels (and the
    same relabelled voxel count) as doing it on the whole grid from the whole-grid probabilities."""
    from lightning_brats.data.readers import make_reader
    from lightning_brats.inference.prediction import (
        PostProcessing,
        Predictor,
        load_trained_model,
        probabilities_to_labels,
    )
    from tests.conftest import inference_settings

    model = load_trained_model(phantom_checkpoint, device="cpu")
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    files = make_reader(model.release.layout).find_cases(case)[0]
    settings = inference_settings(precision="32", overlap=0.25, sw_batch_size=8, flip_tta=False)
    rule = PostProcessing("et", 30, ("tc",))  # both component rules: whole-grid components equal the box's
    result = Predictor(model, settings, rule).predict_case(files)
    whole = result.probabilities
    assert whole.shape == (len(model.regions), *result.label.shape)
    inside = np.zeros(result.label.shape, bool)
    inside[tuple(slice(a, b) for a, b in result.record["crop_box"])] = True
    assert not inside.all()  # the box is smaller than the grid: the comparison means something
    assert (whole[:, ~inside] == 0).all()
    expected, relabelled = probabilities_to_labels(whole, model.regions, settings, rule)
    np.testing.assert_array_equal(result.label, expected)
    assert relabelled == result.relabelled_voxels
    assert (result.label > 0).any()
