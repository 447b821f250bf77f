"""eval.py on real BraTS label maps: scores, summary statistics, BraTS empty rules, pictures, W&B,
and errors naming the bad prediction file. Predictions are made from the ground truth itself
(identical, eroded, shifted, missing), so the expected scores are known."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from lightning_brats.cli.eval import evaluate
from lightning_brats.data.readers import DataError
from lightning_brats.evaluation.metrics import case_region_metrics
from tests.conftest import BRATS20_REGIONS, BRATS_HD95_PENALTY_MM, compose_tool_config
from tests.wandb_records import logged_history

pytestmark = pytest.mark.real_data

CASES = ["Brats18_2013_11_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA02_135_1"]


@pytest.fixture(scope="module")
def gt_root(brats2018_root, tmp_path_factory) -> Path:
    """Three real cases linked into a temporary dataset root (the shared folder is never written)."""
    root = tmp_path_factory.mktemp("gt")
    for case in CASES:
        (root / case).symlink_to(brats2018_root / case)
    return root


def _seg(gt_root: Path, case: str) -> nib.Nifti1Image:
    return nib.load(gt_root / case / f"{case}_seg.nii.gz")


def _write(folder: Path, case: str, label: np.ndarray, like: nib.Nifti1Image) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), like.affine, like.header), folder / f"{case}.nii.gz")


def _run(gt_root: Path, predictions: Path, out: Path, *extra: str) -> dict:
    cfg = compose_tool_config(
        "eval", [f"ground_truth={gt_root}", f"predictions={predictions}", "data=brats20", "logger=csv", *extra], out
    )
    return evaluate(cfg)


def _read_csv(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_identical_predictions_score_perfectly_and_pictures_are_written(gt_root, tmp_path):
    for case in CASES:
        seg = _seg(gt_root, case)
        _write(tmp_path / "pred", case, np.asarray(seg.dataobj), seg)
    result = _run(gt_root, tmp_path / "pred", tmp_path / "out")
    rows = _read_csv(tmp_path / "out" / "metrics.csv")
    assert [r["case_id"] for r in rows] == CASES
    for row, case in zip(rows, CASES):
        truth = np.asarray(_seg(gt_root, case).dataobj)
        for region, codes in BRATS20_REGIONS.items():
            assert float(row[f"dice_{region}"]) == 1.0 and float(row[f"hd95_{region}"]) == 0.0
            assert float(row[f"sensitivity_{region}"]) == 1.0 and float(row[f"specificity_{region}"]) == 1.0
            # 1 mm voxels: 1000 voxels per mL
            assert float(row[f"volume_true_ml_{region}"]) == pytest.approx(np.isin(truth, codes).sum() / 1000, rel=1e-5)
    assert {s["metric"] for s in result["summary"]} >= {"dice", "hd95", "sensitivity", "specificity"}
    for case in CASES:
        with Image.open(tmp_path / "out" / "pictures" / f"{case}.png") as picture:
            assert picture.format == "PNG" and picture.size[0] > 400
    with Image.open(tmp_path / "out" / "dice_boxplot.png") as picture:
        assert picture.format == "PNG"


@pytest.mark.slow
def test_scores_match_the_metric_and_summary_matches_the_rows(gt_root, tmp_path):
    """Eroded, shifted and ET-less predictions: every cell equals case_region_metrics, every
    summary statistic equals NumPy's over metrics.csv."""
    expected = {}
    for i, case in enumerate(CASES):
        seg = _seg(gt_root, case)
        truth = np.asarray(seg.dataobj).astype(np.uint8)
        if i == 0:
            pred = np.where(ndimage.binary_erosion(truth > 0, iterations=2), truth, 0)
        elif i == 1:
            pred = np.roll(truth, (3, -2, 1), axis=(0, 1, 2))
        else:
            pred = np.where(truth == 4, 1, truth)  # no ET predicted where there is ET
        _write(tmp_path / "pred", case, pred, seg)
        expected[case] = {r: case_region_metrics(np.isin(pred, c), np.isin(truth, c), (1.0, 1.0, 1.0)) for r, c in BRATS20_REGIONS.items()}
    _run(gt_root, tmp_path / "pred", tmp_path / "out", "pictures=false")
    rows = _read_csv(tmp_path / "out" / "metrics.csv")
    for row in rows:
        for region, scores in expected[row["case_id"]].items():
            for metric, value in scores.items():
                assert float(row[f"{metric}_{region}"]) == pytest.approx(value, rel=1e-5, abs=1e-6), (row["case_id"], metric, region)
    assert float(rows[2]["dice_et"]) == 0.0 and float(rows[2]["hd95_et"]) == BRATS_HD95_PENALTY_MM
    summary = _read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 6 * 3
    for stat in summary:
        values = np.array([float(r[f"{stat['metric']}_{stat['region']}"]) for r in rows])
        assert float(stat["mean"]) == pytest.approx(values.mean(), rel=1e-5, abs=1e-6)
        assert float(stat["std"]) == pytest.approx(values.std(ddof=1), rel=1e-5, abs=1e-6)
        assert float(stat["median"]) == pytest.approx(np.median(values), rel=1e-5, abs=1e-6)
        assert float(stat["q25"]) == pytest.approx(np.percentile(values, 25), rel=1e-5, abs=1e-6)
        assert float(stat["q75"]) == pytest.approx(np.percentile(values, 75), rel=1e-5, abs=1e-6)
    assert not (tmp_path / "out" / "pictures").exists()


@pytest.mark.slow
def test_missing_prediction_is_an_error_unless_allowed(gt_root, tmp_path):
    seg = _seg(gt_root, CASES[0])
    _write(tmp_path / "pred", CASES[0], np.asarray(seg.dataobj), seg)
    with pytest.raises(DataError, match=rf"2 of 3 labelled cases have no prediction in {tmp_path / 'pred'}.*{CASES[1]}.*allow_missing=true"):
        _run(gt_root, tmp_path / "pred", tmp_path / "out", "pictures=false")
    result = _run(gt_root, tmp_path / "pred", tmp_path / "out", "pictures=false", "allow_missing=true")
    by_case = {r["case_id"]: r for r in result["rows"]}
    assert by_case[CASES[0]]["dice_wt"] == 1.0 and not by_case[CASES[0]]["missing"]
    for case in CASES[1:]:  # scored as an empty prediction: BraTS rules for one empty mask
        assert by_case[case]["missing"] and by_case[case]["dice_wt"] == 0.0 and by_case[case]["hd95_wt"] == BRATS_HD95_PENALTY_MM


@pytest.mark.parametrize("problem,message", [
    ("shape", r"shape \(240, 240, 154\) differs from the ground truth .*Brats18_2013_11_1_seg.nii.gz \(240, 240, 155\)"),
    ("affine", r"affine differs from the ground truth"),
    ("label", r"unknown label values \[3\]"),
    ("corrupt", r"cannot read NIfTI"),
])
def test_bad_prediction_file_is_named(gt_root, tmp_path, problem, message):
    case = CASES[0]
    seg = _seg(gt_root, case)
    truth = np.asarray(seg.dataobj).astype(np.uint8)
    for other in CASES[1:]:
        other_seg = _seg(gt_root, other)
        _write(tmp_path / "pred", other, np.asarray(other_seg.dataobj), other_seg)
    bad = tmp_path / "pred" / f"{case}.nii.gz"
    if problem == "shape":
        nib.save(nib.Nifti1Image(truth[..., :-1], seg.affine), bad)
    elif problem == "affine":
        nib.save(nib.Nifti1Image(truth, np.diag([2.0, 1.0, 1.0, 1.0])), bad)
    elif problem == "label":
        _write(tmp_path / "pred", case, np.where(truth == 4, 3, truth), seg)
    else:
        bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=message) as error:
        _run(gt_root, tmp_path / "pred", tmp_path / "out", "pictures=false")
    assert str(bad) in str(error.value)


@pytest.mark.slow
def test_eval_logs_tables_and_summary_to_wandb_offline(gt_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for case in CASES[:2]:
        seg = _seg(gt_root, case)
        _write(tmp_path / "pred", case, np.where(np.asarray(seg.dataobj) == 4, 1, np.asarray(seg.dataobj)), seg)
    cfg = compose_tool_config(
        "eval", [f"ground_truth={gt_root}", f"predictions={tmp_path / 'pred'}", "data=brats20", "allow_missing=true"], tmp_path / "out"
    )
    evaluate(cfg)
    (run_file,) = (tmp_path / "out").glob("wandb/offline-run-*/run-*.wandb")
    logged = {k: v for row in logged_history(run_file) for k, v in row.items()}
    assert logged["eval/dice_wt_mean"] == pytest.approx(2 / 3)  # two perfect WT, one missing case
    assert logged["eval/dice_et_mean"] == 0.0
    assert any(k.startswith("eval/metrics") for k in logged) and any(k.startswith("eval/summary") for k in logged)
    assert any(k.startswith("eval/cases") for k in logged) and any(k.startswith("eval/dice_boxplot") for k in logged)


def test_eval_needs_a_release_or_a_checkpoint(gt_root, tmp_path):
    cfg = compose_tool_config("eval", [f"ground_truth={gt_root}", f"predictions={tmp_path}", "logger=csv"], tmp_path / "out")
    with pytest.raises(ValueError, match=r"needs the ground truth's release.*data=<name>"):
        evaluate(cfg)
