"""The peer baseline ``experiments/baselines/monai_unet.py``: it holds out this project's fold, writes
label maps on the input grid in the release's codes, and our ``eval.py`` scores them."""

from __future__ import annotations

import importlib.util
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from lightning_brats.cli.eval import evaluate
from tests.conftest import BRATS20_REGIONS, REPO, compose_tool_config, real_label


def _load_baseline():
    spec = importlib.util.spec_from_file_location("monai_unet", REPO / "experiments" / "baselines" / "monai_unet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


baseline = _load_baseline()

#: fold 0 of 5 (seed 12345) of the shared cases as train.py held it out (experiments/README.md, issue 2)
FOLD0_VAL = ["Brats18_2013_11_1", "Brats18_CBICA_AME_1", "Brats18_TCIA10_637_1", "Brats18_TCIA10_639_1"]


def test_tiny_mode_and_defaults():
    args = baseline.parse_args(["--root", "r", "--out", "o"])
    assert (args.steps, args.patch, args.spacing, args.batch_size, args.lr, args.minutes) == (3000, 64, 2.0, 2, 2e-3, None)
    tiny = baseline.parse_args(["--root", "r", "--out", "o", "--tiny"])
    assert (tiny.steps, tiny.patch) == (4, 32)
    net = baseline.build_network()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs[0].in_channels == 4 and {c.out_channels for c in convs} >= {16, 32, 64, 128, 3}
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())


def test_missing_cases_and_modalities_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--root .*: no labelled BraTS case"):
        baseline.find_cases(tmp_path)
    case = tmp_path / "A"
    case.mkdir()
    (case / "A_seg.nii.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"case A has no flair image \(A_flair.nii\[.gz\]\)"):
        baseline.find_cases(tmp_path)


@pytest.mark.slow
@pytest.mark.real_data
def test_tiny_run_predicts_the_held_out_fold_on_the_input_grid_and_eval_scores_it(brats2018_root, tmp_path):
    out = tmp_path / "run"
    result = baseline.main(["--root", str(brats2018_root), "--out", str(out), "--tiny"])
    split = json.loads((out / "split.json").read_text())
    assert split["val"] == FOLD0_VAL and not set(split["train"]) & set(split["val"])
    assert len(split["train"]) == 16 and split["tiny_val"] == FOLD0_VAL[:2] and len(split["tiny_train"]) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["stopped_by"] == "steps"
    assert torch.load(out / "checkpoint.pt", weights_only=False)["stats"]["steps"] == 4
    assert [p.name for p in sorted((out / "predictions").iterdir())] == [f"{c}.nii.gz" for c in FOLD0_VAL[:2]]
    for case in FOLD0_VAL[:2]:
        written = nib.load(out / "predictions" / f"{case}.nii.gz")
        source = nib.load(brats2018_root / case / f"{case}_flair.nii.gz")
        assert written.shape == source.shape == (240, 240, 155)
        np.testing.assert_allclose(written.affine, source.affine)
        assert written.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2, 4}
    # our eval.py scores them: the exact command the script wrote, as a config
    assert f"'cases=[{','.join(FOLD0_VAL[:2])}]'" in (out / "eval_command.txt").read_text()
    cfg = compose_tool_config(
        "eval",
        [f"predictions={out / 'predictions'}", f"ground_truth={brats2018_root}", "data=brats20", "logger=csv",
         f"cases=[{','.join(FOLD0_VAL[:2])}]", "pictures=false"],
        tmp_path / "eval",
    )
    scored = evaluate(cfg)
    assert [row["case_id"] for row in scored["rows"]] == FOLD0_VAL[:2]
    for row in scored["rows"]:  # each Dice worked out here from the written prediction and the truth
        pred = np.asarray(nib.load(out / "predictions" / f"{row['case_id']}.nii.gz").dataobj)
        truth = real_label(brats2018_root, row["case_id"])
        for region, codes in BRATS20_REGIONS.items():
            p, t = np.isin(pred, codes), np.isin(truth, codes)
            dice = 1.0 if not (p.any() or t.any()) else 2 * np.count_nonzero(p & t) / (p.sum() + t.sum())
            assert row[f"dice_{region}"] == pytest.approx(dice, abs=1e-6), (row["case_id"], region)
    assert result["val"] == FOLD0_VAL[:2]


class _BrainPredictor(torch.nn.Module):
    """Logits +50 on every region inside the brain (non-zero z-scored input), -50 outside."""

    def forward(self, x):
        brain = (x != 0).any(dim=1, keepdim=True).float()
        return (100 * brain - 50).repeat(1, 3, 1, 1, 1)


@pytest.mark.slow
@pytest.mark.real_data
def test_predictions_return_to_the_original_grid_in_place(brats2018_root, tmp_path):
    """Crop and 2 mm resampling undone where they were done: a 'prediction' of the brain mask comes
    back onto the original brain mask (a flipped or shifted grid would overlap it far less)."""
    case_id = "Brats18_CBICA_ABM_1"
    cases = baseline.find_cases(brats2018_root)
    args = baseline.parse_args(["--root", str(brats2018_root), "--out", str(tmp_path)])
    (path,) = baseline.predict(args, _BrainPredictor(), [cases[case_id]], tmp_path / "predictions")
    label = np.asarray(nib.load(path).dataobj)
    assert set(np.unique(label)) == {0, 4}  # every region everywhere in the brain: ET, the innermost code
    images = [np.asarray(nib.load(p).dataobj) for p in cases[case_id]["image"]]
    brain = np.any([im != 0 for im in images], axis=0)
    predicted = label > 0
    dice = 2 * np.sum(predicted & brain) / (predicted.sum() + brain.sum())
    assert dice > 0.97
