"""The metric registry (issue 23): each metric declared once, read by eval, compare, the report and
validation. The point is tested directly: a metric registered here, in the test, reaches eval.py's
``metrics.csv`` and ``summary.csv``, and compare's better-direction and ranking, with no other code
touched; unregistered again, compare no longer knows its direction (nothing is guessed from names).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_brats.evaluation import read_csv
from lightning_brats.evaluation import registry as metric_registry
from lightning_brats.evaluation.comparison import ComparisonError, compare
from lightning_brats.evaluation.metrics import RegionDice
from lightning_brats.evaluation.registry import MetricSpec
from lightning_brats.evaluation.report import write_report
from lightning_brats.training.module import VAL_DICE
from tests.conftest import compose_tool_config

CASES = ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
REGIONS = ["wt", "tc", "et"]  # conf/data/brats20.yaml
SPACING_MM = 2.0  # write_phantom_dataset's voxel size
TOY = "volume_difference_ml"  # no token of the old name heuristic: it gave this no direction


def volume_difference_ml(pred: np.ndarray, target: np.ndarray, spacing) -> float:
    """|predicted - true volume| of the region, mL (a toy metric; lower is better)."""
    return abs(int(pred.sum()) - int(target.sum())) * float(np.prod(spacing)) / 1000.0


@pytest.fixture
def toy_metric():
    spec = metric_registry.register(MetricSpec(TOY, "Volume difference", "mL", False, volume_difference_ml))
    try:
        yield spec
    finally:
        metric_registry.unregister(TOY)


def test_every_column_eval_writes_is_registered_with_unit_and_direction():
    legacy = ("dice", "hd95", "sensitivity", "specificity", "volume_pred_ml", "volume_true_ml")
    lesion = ("lesionwise_dice", "lesionwise_hd95", "lesionwise_tp", "lesionwise_fp", "lesionwise_fn")
    panoptic = ("lesionwise_precision", "lesionwise_recall", "lesionwise_f1")
    assert metric_registry.scored("legacy") == legacy
    assert metric_registry.scored("brats2023") == metric_registry.scored("brats2024") == (*legacy, *lesion)
    assert metric_registry.scored("brats2025") == (*legacy, *lesion, *panoptic)
    units = {name: metric_registry.get(name).unit for name in (*legacy, *lesion, *panoptic)}
    assert units["dice"] == "" and units["hd95"] == units["lesionwise_hd95"] == "mm"
    assert units["volume_true_ml"] == "mL" and units["lesionwise_fp"] == "lesions"
    directions = {name: metric_registry.direction(name) for name in units}
    assert [n for n, d in directions.items() if d == -1] == ["hd95", "lesionwise_hd95", "lesionwise_fp", "lesionwise_fn"]
    assert [n for n, d in directions.items() if d == 0] == ["volume_pred_ml", "volume_true_ml"]
    # lesion-wise metrics are declared here but computed by their definition's scorer (parameters in the data config)
    assert all(metric_registry.get(n).compute is None for n in (*lesion, *panoptic))
    assert metric_registry.get("hd95").describe() == "HD95 (mm; lower is better)"
    with pytest.raises(ValueError, match="metrics='brats2019' is unknown"):
        metric_registry.scored("brats2019")
    with pytest.raises(ValueError, match="registered already"):
        metric_registry.register(MetricSpec("dice", "Dice", "", True, volume_difference_ml))
    with pytest.raises(ValueError, match="no compute function"):
        MetricSpec("nothing", "Nothing", "", True)


def test_validation_dice_is_the_registrys_dice_on_batched_tensors():
    """The module logs ``val/dice_*`` with RegionDice; per case it equals eval.py's Dice (empty masks too)."""
    assert VAL_DICE is metric_registry.get("dice") and VAL_DICE.batched is RegionDice and VAL_DICE.direction == 1
    rng = np.random.default_rng(0)
    pred = ndimage.binary_dilation(rng.random((4, 2, 12, 10, 8)) > 0.97, iterations=1)
    target = ndimage.binary_dilation(rng.random((4, 2, 12, 10, 8)) > 0.97, iterations=1)
    pred[0, 0], target[0, 0] = False, False  # both empty: 1
    pred[1, 1] = False  # prediction empty, truth not: 0
    expected = np.array([[VAL_DICE.compute(p, t, (1.0, 1.0, 1.0)) for p, t in zip(ps, ts)] for ps, ts in zip(pred, target)])
    assert expected[0, 0] == 1.0 and expected[1, 1] == 0.0 and 0 < expected[2, 0] < 1
    batched = VAL_DICE.batched(2)
    batched.update(torch.from_numpy(pred[:2]), torch.from_numpy(target[:2]))
    batched.update(torch.from_numpy(pred[2:]), torch.from_numpy(target[2:]))
    np.testing.assert_allclose(batched.compute().numpy(), expected.mean(0), rtol=1e-12)


def _predictions(root: Path, folder: Path, grow: bool) -> Path:
    """The ground truth as predictions; with ``grow``, WT one voxel larger all round (new voxels edema, 2)."""
    folder.mkdir()
    for case in CASES:
        seg = nib.load(root / case / f"{case}_seg.nii.gz")
        label = np.asarray(seg.dataobj).astype(np.uint8)
        if grow:
            label = np.where((label == 0) & ndimage.binary_dilation(label > 0), 2, label).astype(np.uint8)
        nib.save(nib.Nifti1Image(label, seg.affine, seg.header), folder / f"{case}.nii.gz")
    return folder


def test_a_registered_metric_reaches_eval_compare_and_the_report_with_no_other_change(toy_metric, tmp_path):
    from lightning_brats.cli.eval import evaluate
    from lightning_brats.data.phantoms import write_phantom_dataset

    root = tmp_path / "gt"
    write_phantom_dataset(root, num_cases=len(CASES), shape=(24, 24, 16), spacing_mm=SPACING_MM)
    folders = {}
    for name, grow in (("exact", False), ("grown", True)):
        predictions = _predictions(root, tmp_path / f"pred_{name}", grow)
        folders[name] = tmp_path / name
        evaluate(compose_tool_config("eval", [f"ground_truth={root}", f"predictions={predictions}", "data=brats20",
                                              "logger=csv", "pictures=false"], folders[name]))

    # eval: the toy's columns after the built-in ones, its values per case and region, its summary rows
    rows = read_csv(folders["grown"] / "metrics.csv")
    columns = list(rows[0])
    assert columns[-len(REGIONS):] == [f"{TOY}_{r}" for r in REGIONS]
    assert columns[2:-len(REGIONS)] == [f"{m}_{r}" for m in metric_registry.scored("legacy")[:6] for r in REGIONS]
    for row, case in zip(rows, CASES):
        truth = np.asarray(nib.load(root / case / f"{case}_seg.nii.gz").dataobj)
        grown_voxels = int((ndimage.binary_dilation(truth > 0) & (truth == 0)).sum())
        assert grown_voxels > 0
        assert row[f"{TOY}_wt"] == pytest.approx(grown_voxels * SPACING_MM**3 / 1000, rel=1e-6)
        assert row[f"{TOY}_wt"] == pytest.approx(row["volume_pred_ml_wt"] - row["volume_true_ml_wt"], rel=1e-5)
        assert row[f"{TOY}_tc"] == row[f"{TOY}_et"] == 0.0  # only edema was added
    assert all(row[f"{TOY}_{r}"] == 0.0 for row in read_csv(folders["exact"] / "metrics.csv") for r in REGIONS)
    summary = {(s["metric"], s["region"]): s for s in read_csv(folders["grown"] / "summary.csv")}
    assert summary[(TOY, "wt")]["cases"] == 3
    assert summary[(TOY, "wt")]["mean"] == pytest.approx(np.mean([row[f"{TOY}_wt"] for row in rows]), rel=1e-5)

    # the report's header for the column says what the registry declares
    page = write_report(folders["grown"]).read_text()
    assert f'data-column="{TOY}_wt" title="Volume difference (mL; lower is better), WT"' in page

    # compare: lower is better, so the exact model wins the WT paired test and the ranking by it
    pair = [folders["exact"], folders["grown"]]
    result = compare(pair, rank=[TOY], n_resamples=200)
    toy_wt = next(p for p in result.paired if (p["metric"], p["region"]) == (TOY, "wt"))
    assert toy_wt["mean_difference"] > 0 and toy_wt["better"] == "exact"
    assert result.ranked == [(TOY, r) for r in REGIONS] and result.place.tolist() == [1, 2]

    # unregistered, the same column has no direction: no winner named, not rankable
    metric_registry.unregister(TOY)
    try:
        again = compare(pair, n_resamples=200)
        assert next(p for p in again.paired if (p["metric"], p["region"]) == (TOY, "wt"))["better"] == ""
        with pytest.raises(ComparisonError, match=rf"rank=\['{TOY}'\]: no better direction"):
            compare(pair, rank=[TOY], n_resamples=200)
    finally:
        metric_registry.register(toy_metric)


@pytest.mark.parametrize("data", ["brats20", "brats23"])
def test_the_best_checkpoint_is_chosen_in_the_registrys_direction(tmp_path, data):
    """conf/callbacks/default.yaml keeps the checkpoint with the best ``val/<metric>_mean``; its ``mode``
    must be the registry's direction of that metric (Dice for brats20, lesion-wise Dice for brats23)."""
    from tests.conftest import compose_config

    checkpoint = compose_config([f"data={data}", "data.root=/nowhere"], tmp_path).callbacks.model_checkpoint
    metric = checkpoint.monitor.removeprefix("val/").removesuffix("_mean")
    assert metric == {"brats20": "dice", "brats23": "lesionwise_dice"}[data]
    assert checkpoint.mode == {1: "max", -1: "min"}[metric_registry.direction(metric)]
