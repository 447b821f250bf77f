"""Lesion-wise metrics (BraTS 2023, 2024, Lighthouse 2025) on hand-built 3D label maps whose
answers follow from the definitions: cubes with known volumes, gaps, surfaces and distances.
Expected HD95 values come from the cubes' faces (surface voxels enumerated here and measured with
plain Euclidean distances), never from the code under test."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from lightning_brats.evaluation.lesion_metrics import (
    PANOPTIC_HD95_INF_MM,
    check_settings,
    lesion_wise_scores,
    panoptic_scores,
    score_lesion_wise,
)
from lightning_brats.evaluation.scoring import case_metrics
from tests.conftest import BRATS23_REGIONS, require_extra

SHAPE = (48, 40, 40)
PENALTY = 374.0


def box(start, size):
    """Index of an axis-aligned box: ``start`` corner, ``size`` voxels per axis."""
    return tuple(slice(s, s + n) for s, n in zip(start, size))


def volume(*boxes, value=1):
    out = np.zeros(SHAPE, np.uint8)
    for b in boxes:
        out[b] = value
    return out


def faces(b) -> np.ndarray:
    """Voxel coordinates on the faces of box ``b`` (its surface: a 6-neighbour outside the box)."""
    grid = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in b], indexing="ij"), -1).reshape(-1, 3)
    lo, hi = np.array([s.start for s in b]), np.array([s.stop - 1 for s in b])
    return grid[((grid == lo) | (grid == hi)).any(1)]


def hd95_between(surface_a: np.ndarray, surface_b: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """Symmetric 95th-percentile Hausdorff distance (mm) between two sets of surface voxels."""
    d = cdist(surface_a * np.asarray(spacing), surface_b * np.asarray(spacing))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def scores(pred, truth, spacing=(1.0, 1.0, 1.0), dilation=3, min_volume=50.0, **kw):
    return lesion_wise_scores(pred, truth, spacing, dilation=dilation, min_volume=min_volume, hd95_penalty=PENALTY, **kw)


# two 4x4x4 cubes (64 voxels each) 4 voxels apart along x: 3 dilations of each reach across
# the gap (3 + 3 >= 4), 1 dilation does not (1 + 1 < 4)
A, B = box((5, 5, 5), (4, 4, 4)), box((13, 5, 5), (4, 4, 4))


def test_lesions_merged_by_dilation_count_as_one():
    truth, pred = volume(A, B), volume(A)
    merged = scores(pred, truth, dilation=3)
    # one lesion of 128 voxels, half of it predicted
    assert (merged["lesionwise_tp"], merged["lesionwise_fp"], merged["lesionwise_fn"]) == (1, 0, 0)
    assert merged["lesionwise_dice"] == pytest.approx(2 * 64 / (64 + 128))
    expected_hd95 = hd95_between(np.concatenate([faces(A), faces(B)]), faces(A))
    assert expected_hd95 > 4  # B's faces lie 4-11 mm from A's
    assert merged["lesionwise_hd95"] == pytest.approx(expected_hd95, rel=1e-6)
    apart = scores(pred, truth, dilation=1)
    # two lesions: A found exactly (Dice 1, HD95 0), B missed (0, penalty)
    assert (apart["lesionwise_tp"], apart["lesionwise_fp"], apart["lesionwise_fn"]) == (1, 0, 1)
    assert apart["lesionwise_dice"] == pytest.approx(0.5)
    assert apart["lesionwise_hd95"] == pytest.approx(PENALTY / 2)


def test_missed_lesion_and_false_positive_are_penalised():
    far_lesion, far_fp = box((30, 25, 25), (4, 4, 4)), box((35, 5, 30), (3, 3, 3))
    truth, pred = volume(A, far_lesion), volume(A, far_fp)
    result = scores(pred, truth)
    assert (result["lesionwise_tp"], result["lesionwise_fp"], result["lesionwise_fn"]) == (1, 1, 1)
    # (1 + 0 + 0) / (2 lesions + 1 false positive); HD95 (0 + 374 + 374) / 3
    assert result["lesionwise_dice"] == pytest.approx(1 / 3)
    assert result["lesionwise_hd95"] == pytest.approx(2 * PENALTY / 3)


def test_prediction_near_a_lesion_is_collected_not_a_false_positive():
    # a 2x2x2 blob 2 voxels beside A: inside A's 3-voxel dilation, so it belongs to A's union
    blob = box((5, 5, 11), (2, 2, 2))
    result = scores(volume(A, blob), volume(A))
    assert (result["lesionwise_tp"], result["lesionwise_fp"], result["lesionwise_fn"]) == (1, 0, 0)
    assert result["lesionwise_dice"] == pytest.approx(2 * 64 / (64 + 72))


def test_lesions_at_or_below_the_threshold_are_left_out():
    small = box((30, 30, 30), (2, 2, 2))  # 8 voxels
    truth = volume(A, small)
    # found or missed, the small lesion does not count; a prediction on it is no false positive
    for pred in (volume(A), volume(A, small)):
        result = scores(pred, truth)
        assert (result["lesionwise_tp"], result["lesionwise_fp"], result["lesionwise_fn"]) == (1, 0, 0)
        assert result["lesionwise_dice"] == 1.0 and result["lesionwise_hd95"] == 0.0
    # exactly at the threshold is left out ("at or below"), one voxel above counts
    fifty = box((20, 20, 20), (5, 5, 2))
    assert scores(volume(), volume(fifty), min_volume=50)["lesionwise_dice"] == 1.0
    missed = scores(volume(), volume(fifty), min_volume=49)
    assert missed["lesionwise_dice"] == 0.0 and missed["lesionwise_hd95"] == PENALTY and missed["lesionwise_fn"] == 1


def test_threshold_is_a_volume_in_mm3():
    cube27 = box((20, 20, 20), (3, 3, 3))  # 27 voxels
    assert scores(volume(), volume(cube27), min_volume=50)["lesionwise_fn"] == 0  # 27 mm^3
    assert scores(volume(), volume(cube27), spacing=(1.0, 1.0, 2.0), min_volume=50)["lesionwise_fn"] == 1  # 54 mm^3


def test_empty_ground_truth_with_and_without_false_positives():
    empty = volume()
    assert scores(empty, empty) == {
        "lesionwise_dice": 1.0, "lesionwise_hd95": 0.0, "lesionwise_tp": 0, "lesionwise_fp": 0, "lesionwise_fn": 0,
    }
    one = scores(volume(A), empty)
    assert (one["lesionwise_dice"], one["lesionwise_hd95"], one["lesionwise_fp"]) == (0.0, PENALTY, 1)
    two = scores(volume(A, box((30, 30, 30), (3, 3, 3))), empty)
    assert (two["lesionwise_dice"], two["lesionwise_hd95"], two["lesionwise_fp"]) == (0.0, PENALTY, 2)


@pytest.mark.parametrize("spacing,expected", [((1.0, 1.0, 1.0), 1.0), ((1.0, 1.0, 3.0), 3.0), ((2.0, 1.0, 1.0), 1.0)])
def test_hd95_uses_the_voxel_spacing(spacing, expected):
    """An 8^3 cube predicted one voxel too high along z: the top and bottom faces (64 of 296
    surface voxels, over 5 %) lie one z-step apart, every other surface voxel on the other surface;
    so HD95 = one z-step in mm."""
    cube, shifted = box((10, 10, 10), (8, 8, 8)), box((10, 10, 11), (8, 8, 8))
    result = scores(volume(shifted), volume(cube), spacing=spacing)
    assert result["lesionwise_dice"] == pytest.approx(2 * 8 * 8 * 7 / (2 * 512))
    assert result["lesionwise_hd95"] == pytest.approx(expected)
    assert expected == pytest.approx(hd95_between(faces(shifted), faces(cube), spacing))


def test_brats2024_removes_small_predicted_units_and_counts_merged_ones_once():
    truth = volume(A)
    speck = box((35, 30, 30), (2, 2, 2))  # 8 voxels, far from A
    pred = volume(A, speck)
    in_2023 = scores(pred, truth)
    assert in_2023["lesionwise_fp"] == 1 and in_2023["lesionwise_dice"] == pytest.approx(0.5)
    in_2024 = scores(pred, truth, remove_small_predictions=True)
    assert in_2024["lesionwise_fp"] == 0 and in_2024["lesionwise_dice"] == 1.0 and in_2024["lesionwise_hd95"] == 0.0
    # two 27-voxel components 2 voxels apart: each alone is below 50, together (merged by the
    # dilation) 54 voxels, one false-positive unit; in 2023 they are two false positives
    pair = volume(A, box((30, 25, 25), (3, 3, 3)), box((35, 25, 25), (3, 3, 3)))
    assert scores(pair, truth)["lesionwise_fp"] == 2
    kept = scores(pair, truth, remove_small_predictions=True)
    assert kept["lesionwise_fp"] == 1 and kept["lesionwise_dice"] == pytest.approx(0.5)
    assert kept["lesionwise_hd95"] == pytest.approx(PENALTY / 2)


SETTINGS = {"dilation": 3, "min_volume": {"wt": 50, "tc": 50, "et": 10}, "hd95_penalty": 374}


def test_regions_thresholds_per_region_and_settings_are_checked():
    truth = volume(A, value=2)
    truth[box((30, 30, 30), (3, 3, 3))] = 3  # a 27-voxel ET lesion, also TC and WT
    pred = truth.copy()
    pred[box((30, 30, 30), (3, 3, 3))] = 0  # ET missed
    row = score_lesion_wise(pred, truth, BRATS23_REGIONS, (1.0, 1.0, 1.0), "brats2023", SETTINGS)
    # WT: A found, the 27-voxel lesion is below WT's 50 -> left out; ET: 27 > 10 -> a missed lesion
    assert (row["lesionwise_tp_wt"], row["lesionwise_fn_wt"], row["lesionwise_dice_wt"]) == (1, 0, 1.0)
    assert (row["lesionwise_tp_et"], row["lesionwise_fn_et"], row["lesionwise_dice_et"]) == (0, 1, 0.0)
    assert row["lesionwise_dice_tc"] == 1.0  # TC's only lesion is the small one: nothing scored
    assert set(row) == {f"{m}_{r}" for m in case_metrics("brats2023")[6:] for r in BRATS23_REGIONS}
    with pytest.raises(ValueError, match=r"metrics=brats2024 needs data.release.evaluation.lesion_wise.*\+data.release.evaluation.lesion_wise"):
        check_settings("brats2024", None, BRATS23_REGIONS)
    with pytest.raises(ValueError, match=r"min_volume has no value for regions \['et'\]"):
        check_settings("brats2023", {**SETTINGS, "min_volume": {"wt": 50, "tc": 50}}, BRATS23_REGIONS)
    with pytest.raises(ValueError, match=r"metrics='brats2022' is unknown; choose one of legacy, brats2023"):
        check_settings("brats2022", SETTINGS, BRATS23_REGIONS)
    check_settings("brats2025", None, BRATS23_REGIONS)  # panoptica needs no lesion_wise block
    assert score_lesion_wise(pred, truth, BRATS23_REGIONS, (1.0, 1.0, 1.0), "legacy") == {}


# The challenge's own configuration as BraTS-evaluation ships it (config_gli.yaml's form, with the
# groups of this case): the brats2025 path must give what panoptica gives when configured so.
GLI_2025_CONFIG = """!Panoptica_Evaluator
decision_metric: null
decision_threshold: null
edge_case_handler: !EdgeCaseHandler
  empty_list_std: !EdgeCaseResult NAN
  listmetric_zeroTP_handling:
    !Metric DSC: !MetricZeroTPEdgeCaseHandling {empty_prediction_result: !EdgeCaseResult ZERO,
      empty_reference_result: !EdgeCaseResult ZERO, no_instances_result: !EdgeCaseResult NAN,
      normal: !EdgeCaseResult ZERO}
    !Metric HD95: !MetricZeroTPEdgeCaseHandling {empty_prediction_result: !EdgeCaseResult INF,
      empty_reference_result: !EdgeCaseResult INF, no_instances_result: !EdgeCaseResult NAN,
      normal: !EdgeCaseResult INF}
expected_input: !InputType SEMANTIC
global_metrics: [!Metric DSC, !Metric HD95]
instance_approximator: !ConnectedComponentsInstanceApproximator {cca_backend: null}
instance_matcher: !MaxBipartiteMatching {matching_metric: !Metric DSC, matching_threshold: 0.000001}
instance_metrics: [!Metric DSC, !Metric HD95]
log_times: false
save_group_times: false
segmentation_class_groups: !SegmentationClassGroups
  groups:
    et: !LabelGroup {single_instance: false, value_labels: [3]}
    netc: !LabelGroup {single_instance: false, value_labels: [1]}
    tc: !LabelMergeGroup {single_instance: false, value_labels: [1, 3]}
    wt: !LabelMergeGroup {single_instance: false, value_labels: [1, 2, 3]}
verbose: false
"""


def test_brats2025_matches_panoptica_configured_as_the_challenge(tmp_path):
    panoptica = require_extra("metrics2025", "panoptica")
    regions = {"wt": [1, 2, 3], "tc": [1, 3], "et": [3], "netc": [1]}
    truth = volume(A, value=3)
    truth[box((30, 25, 25), (4, 4, 4))] = 2  # a second WT lesion, edema only
    pred = np.zeros_like(truth)
    pred[box((5, 5, 6), (4, 4, 4))] = 3  # A shifted one voxel along z: Dice 48/64
    pred[box((35, 5, 30), (3, 3, 3))] = 1  # a false positive (WT, TC and NETC); no NETC in the truth
    spacing = (1.0, 1.0, 2.0)
    ours = panoptic_scores(pred, truth, regions, spacing)
    config = tmp_path / "gli_2025.yaml"
    config.write_text(GLI_2025_CONFIG)
    official = panoptica.Panoptica_Evaluator.load_from_config(str(config)).evaluate(pred, truth, voxelspacing=spacing)
    for region in regions:
        result = official[region].to_dict()  # what BraTS-evaluation's parser reads
        hd95 = PANOPTIC_HD95_INF_MM if math.isinf(result["sq_hd95"]) else result["sq_hd95"]
        assert ours[f"lesionwise_dice_{region}"] == pytest.approx(result["sq_dsc"], nan_ok=True), region
        assert ours[f"lesionwise_hd95_{region}"] == pytest.approx(hd95, nan_ok=True), region
        assert (ours[f"lesionwise_tp_{region}"], ours[f"lesionwise_fp_{region}"], ours[f"lesionwise_fn_{region}"]) == (
            result["tp"], result["fp"], result["fn"]), region
        for ours_name, name in (("f1", "rq"), ("precision", "prec"), ("recall", "rec")):
            assert ours[f"lesionwise_{ours_name}_{region}"] == pytest.approx(result.get(name, math.nan), nan_ok=True), region
    # and the values the definition gives: WT matches A (Dice 2*48/128) and misses the edema lesion
    # (recall 1/2), its false positive makes precision 1/2; HD95 of the matched pair = one z-step
    assert ours["lesionwise_dice_wt"] == pytest.approx(0.75)
    assert (ours["lesionwise_tp_wt"], ours["lesionwise_fp_wt"], ours["lesionwise_fn_wt"]) == (1, 1, 1)
    assert ours["lesionwise_precision_wt"] == pytest.approx(0.5) and ours["lesionwise_recall_wt"] == pytest.approx(0.5)
    assert ours["lesionwise_f1_wt"] == pytest.approx(0.5)
    assert ours["lesionwise_hd95_wt"] == pytest.approx(2.0)
    # NETC: only a false positive -> no true positive: Dice 0, HD95 infinite -> 373
    assert ours["lesionwise_dice_netc"] == 0.0 and ours["lesionwise_hd95_netc"] == PANOPTIC_HD95_INF_MM
    assert ours["lesionwise_precision_netc"] == 0.0 and math.isnan(ours["lesionwise_recall_netc"])  # 0 / 0
    empty = panoptic_scores(np.zeros_like(truth), np.zeros_like(truth), {"et": [3]}, spacing)
    assert math.isnan(empty["lesionwise_dice_et"]) and empty["lesionwise_tp_et"] == 0


# ---------------------------------------------------------------- eval.py on real cases

CASES = ["Brats18_2013_11_1", "Brats18_CBICA_ABM_1"]


@pytest.mark.slow
@pytest.mark.real_data
def test_eval_brats2023_on_real_cases_scores_perfect_predictions(brats2018_root, tmp_path):
    from lightning_brats.cli.eval import evaluate
    from tests.conftest import compose_tool_config

    gt_root = tmp_path / "gt"
    gt_root.mkdir()
    for case in CASES:
        (gt_root / case).symlink_to(brats2018_root / case)
        seg = nib.load(brats2018_root / case / f"{case}_seg.nii.gz")
        (tmp_path / "pred").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(seg.dataobj).astype(np.uint8), seg.affine, seg.header),
                 tmp_path / "pred" / f"{case}.nii.gz")
    cfg = compose_tool_config("eval", [
        f"ground_truth={gt_root}", f"predictions={tmp_path / 'pred'}", "data=brats20", "logger=csv",
        "pictures=false", "metrics=brats2023",
    ], tmp_path / "out")
    result = evaluate(cfg)
    assert result["metrics"] == "brats2023"
    with open(Path(tmp_path / "out" / "metrics.csv")) as handle:
        rows = list(csv.DictReader(handle))
    regions = ["wt", "tc", "et"]
    columns = {f"{m}_{r}" for m in ("dice", "hd95", "lesionwise_dice", "lesionwise_hd95", "lesionwise_tp",
                                     "lesionwise_fp", "lesionwise_fn") for r in regions}
    assert columns <= set(rows[0]) and [r["case_id"] for r in rows] == CASES
    for row in rows:
        for region in regions:
            assert float(row[f"lesionwise_dice_{region}"]) == 1.0 and float(row[f"lesionwise_hd95_{region}"]) == 0.0
            assert row[f"lesionwise_fp_{region}"] == "0" and row[f"lesionwise_fn_{region}"] == "0"
            assert int(row[f"lesionwise_tp_{region}"]) >= 1
    with open(tmp_path / "out" / "summary.csv") as handle:
        summary = {(s["metric"], s["region"]): s for s in csv.DictReader(handle)}
    assert float(summary[("lesionwise_dice", "et")]["mean"]) == 1.0 and summary[("lesionwise_fp", "wt")]["cases"] == "2"


# --- BraTS 2024 GLI: ground-truth lesions merged across tissues (metrics_GLI.py) --------------------

GLI24 = {"netc": [1], "et": [3]}
GLI24_SETTINGS = {"dilation": 3, "min_volume": {"netc": 10, "et": 10}, "hd95_penalty": PENALTY}
#: two NETC cubes (label 1) of 64 voxels, 14 voxels apart along x: too far for NETC's own dilation (3)
N1, N2 = box((2, 2, 2), (4, 4, 4)), box((20, 2, 2), (4, 4, 4))


def test_brats2024_gli_lesions_touching_one_partner_lesion_are_one_lesion():
    """An ET bar fills the gap and touches both NETC cubes: with merge_across they are one NETC lesion of
    128 voxels. The prediction finds N1 only: Dice 2 * 64 / (64 + 128) = 2/3, one true positive, no
    false negative; without the merge N1 scores 1 and N2 is missed: (1 + 0) / 2 = 1/2."""
    truth = volume(N1, N2)
    truth[box((6, 2, 2), (14, 4, 4))] = 3
    prediction = volume(N1)
    prediction[box((6, 2, 2), (14, 4, 4))] = 3
    plain = score_lesion_wise(prediction, truth, GLI24, (1, 1, 1), "brats2024", GLI24_SETTINGS)
    assert plain["lesionwise_dice_netc"] == pytest.approx(0.5) and plain["lesionwise_fn_netc"] == 1
    merged = score_lesion_wise(prediction, truth, GLI24, (1, 1, 1), "brats2024",
                               {**GLI24_SETTINGS, "merge_across": {"netc": ["et"], "et": ["netc"]}})
    assert merged["lesionwise_dice_netc"] == pytest.approx(2 / 3)
    assert (merged["lesionwise_tp_netc"], merged["lesionwise_fn_netc"], merged["lesionwise_fp_netc"]) == (1, 0, 0)
    assert merged["lesionwise_dice_et"] == pytest.approx(1.0)  # one ET lesion, found exactly


def test_brats2024_gli_lesions_touching_different_partner_lesions_stay_apart():
    """Each NETC cube touches its own 2-voxel ET slab, and the slabs are 10 voxels apart (separate ET
    lesions): no merge, so N2 missed gives (1 + 0) / 2 = 1/2 as without merge_across."""
    truth = volume(N1, N2)
    truth[box((6, 2, 2), (2, 4, 4))] = 3
    truth[box((18, 2, 2), (2, 4, 4))] = 3
    prediction = volume(N1)
    merged = score_lesion_wise(prediction, truth, GLI24, (1, 1, 1), "brats2024",
                               {**GLI24_SETTINGS, "merge_across": {"netc": ["et"]}})
    assert merged["lesionwise_dice_netc"] == pytest.approx(0.5) and merged["lesionwise_fn_netc"] == 1


def test_merge_across_partners_must_be_scored_regions():
    with pytest.raises(ValueError, match=r"merge_across.netc=\['rc'\] names regions \['rc'\] that are not scored"):
        check_settings("brats2024", {**GLI24_SETTINGS, "merge_across": {"netc": ["rc"]}}, GLI24)
