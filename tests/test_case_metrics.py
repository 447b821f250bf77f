"""Per-case challenge metrics: Dice, HD95 (mm), sensitivity, specificity and volumes, checked
against values worked out in the tests (a shifted cube's surface distances by hand, and surface
distances of real masks measured with a k-d tree), never against the library the code calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from lightning_brats.evaluation.metrics import case_region_metrics
from tests.conftest import BRATS_HD95_PENALTY_MM, real_label

CASE = "Brats18_CBICA_ABM_1"


@pytest.fixture(scope="module")
def whole_tumour(brats2018_root) -> np.ndarray:
    return np.isin(real_label(brats2018_root, CASE), [1, 2, 4])


def _eroded(mask: np.ndarray) -> np.ndarray:
    inverted = torch.from_numpy(~mask).float()[None, None]
    return (torch.nn.functional.max_pool3d(inverted, 3, stride=1, padding=1)[0, 0] == 0).numpy()


def _surface(mask: np.ndarray) -> np.ndarray:
    """``(N, 3)`` voxel indices of ``mask`` with a 6-neighbour outside it (or outside the array)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner)


def _hd95(pred: np.ndarray, target: np.ndarray, spacing) -> float:
    """Symmetric 95th-percentile distance (mm) between the two surfaces, by nearest neighbours."""
    a, b = _surface(pred) * np.asarray(spacing), _surface(target) * np.asarray(spacing)
    return max(np.percentile(cKDTree(b).query(a)[0], 95), np.percentile(cKDTree(a).query(b)[0], 95))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 3.0), (2.0, 1.0, 1.0)])
def test_hd95_of_a_cube_shifted_one_voxel_is_one_step_along_the_shift(spacing):
    """An 8^3 cube predicted one voxel higher along z. Each cube has 8^3 - 6^3 = 296 surface voxels;
    the 64 of the prediction's top face lie outside the truth, one z-step above the truth's top
    face (the truth's bottom face likewise below the prediction's): 64/296 > 5 %, and no surface
    voxel lies farther than one z-step from the other surface (every other one is on it or one
    step from it), so HD95 = spacing[2]. Dice = 2 * 7 * 64 / (2 * 512)."""
    truth, pred = np.zeros((16, 16, 20), bool), np.zeros((16, 16, 20), bool)
    truth[4:12, 4:12, 4:12] = True
    pred[4:12, 4:12, 5:13] = True
    metrics = case_region_metrics(pred, truth, spacing)
    assert metrics["hd95"] == pytest.approx(spacing[2])
    assert metrics["dice"] == pytest.approx(7 / 8)
    assert metrics["sensitivity"] == pytest.approx(7 / 8)
    assert metrics["specificity"] == pytest.approx(1 - 64 / (16 * 16 * 20 - 512))
    assert metrics["volume_pred_ml"] == pytest.approx(512 * math.prod(spacing) / 1000)
    assert len(_surface(truth)) == 296 and _hd95(pred, truth, spacing) == pytest.approx(spacing[2])


@pytest.mark.real_data
@pytest.mark.parametrize("change", ["shift", "erode"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.5)])
def test_dice_and_hd95_on_real_masks_match_an_independent_computation(whole_tumour, change, spacing):
    other = np.roll(whole_tumour, 3, axis=0) if change == "shift" else _eroded(whole_tumour)
    metrics = case_region_metrics(other, whole_tumour, spacing)
    overlap = np.count_nonzero(other & whole_tumour)
    assert metrics["dice"] == pytest.approx(2 * overlap / (other.sum() + whole_tumour.sum()), abs=1e-9)
    assert metrics["hd95"] == pytest.approx(_hd95(other, whole_tumour, spacing), abs=1e-3)
    assert 0.5 < metrics["dice"] < 1.0 and metrics["hd95"] >= min(spacing)  # the masks differ
    voxel_ml = np.prod(spacing) / 1000
    assert metrics["volume_true_ml"] == pytest.approx(whole_tumour.sum() * voxel_ml)
    assert metrics["volume_pred_ml"] == pytest.approx(other.sum() * voxel_ml)
    if change == "erode":  # an eroded copy lies inside: no false positives, some misses
        assert metrics["specificity"] == 1.0 and metrics["sensitivity"] == pytest.approx(other.sum() / whole_tumour.sum())


@pytest.mark.real_data
def test_spacing_is_honoured(whole_tumour):
    shifted = np.roll(whole_tumour, 3, axis=0)
    iso = case_region_metrics(shifted, whole_tumour, (1.0, 1.0, 1.0))["hd95"]
    coarse = case_region_metrics(shifted, whole_tumour, (2.0, 1.0, 1.0))["hd95"]
    assert iso == pytest.approx(3.0, abs=0.5)  # a 3-voxel shift along x
    # at 2 mm along x the shift is 6 mm; surface points then find nearer partners across y/z
    assert coarse >= iso + 1.0


def test_empty_mask_conventions():
    empty, blob = np.zeros((8, 8, 8), bool), np.zeros((8, 8, 8), bool)
    blob[2:5, 2:5, 2:5] = True
    both = case_region_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["hd95"] == 0.0 and both["sensitivity"] == 1.0 and both["specificity"] == 1.0
    penalty = BRATS_HD95_PENALTY_MM  # the diagonal of the 240 x 240 x 155 1-mm volume
    missed = case_region_metrics(empty, blob, (1, 1, 1))
    assert missed["dice"] == 0.0 and missed["hd95"] == penalty and missed["sensitivity"] == 0.0
    spurious = case_region_metrics(blob, empty, (1, 1, 1))
    assert spurious["dice"] == 0.0 and spurious["hd95"] == penalty
    assert spurious["specificity"] == pytest.approx(1 - 27 / 512)
    with pytest.raises(ValueError, match="same 3D shape"):
        case_region_metrics(blob[:4], blob, (1, 1, 1))
