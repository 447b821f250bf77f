"""Per-case challenge metrics on real label maps agree with MONAI and follow BraTS conventions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from lightning_brats.metrics import EMPTY_HD95_MM, case_region_metrics

CASE = "Brats18_CBICA_ABM_1"


@pytest.fixture(scope="module")
def whole_tumour(brats2018_root) -> np.ndarray:
    label = np.asarray(nib.load(brats2018_root / CASE / f"{CASE}_seg.nii.gz").dataobj)
    return np.isin(label, [1, 2, 4])


def _eroded(mask: np.ndarray) -> np.ndarray:
    inverted = torch.from_numpy(~mask).float()[None, None]
    return (torch.nn.functional.max_pool3d(inverted, 3, stride=1, padding=1)[0, 0] == 0).numpy()


def _monai(pred: np.ndarray, target: np.ndarray, spacing) -> tuple[float, float]:
    p, t = torch.from_numpy(pred)[None, None].float(), torch.from_numpy(target)[None, None].float()
    dice = float(compute_dice(p, t, include_background=True)[0, 0])
    hd95 = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=list(spacing))[0, 0])
    return dice, hd95


@pytest.mark.real_data
@pytest.mark.parametrize("change", ["shift", "erode"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.5)])
def test_dice_and_hd95_agree_with_monai_on_real_masks(whole_tumour, change, spacing):
    other = np.roll(whole_tumour, 3, axis=0) if change == "shift" else _eroded(whole_tumour)
    metrics = case_region_metrics(other, whole_tumour, spacing)
    dice, hd95 = _monai(other, whole_tumour, spacing)
    assert metrics["dice"] == pytest.approx(dice, abs=1e-6)
    assert metrics["hd95"] == pytest.approx(hd95, abs=1e-3)
    assert 0.5 < metrics["dice"] < 1.0 and metrics["hd95"] > 0
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
    missed = case_region_metrics(empty, blob, (1, 1, 1))
    assert missed["dice"] == 0.0 and missed["hd95"] == EMPTY_HD95_MM == 373.13 and missed["sensitivity"] == 0.0
    spurious = case_region_metrics(blob, empty, (1, 1, 1))
    assert spurious["dice"] == 0.0 and spurious["hd95"] == EMPTY_HD95_MM
    assert spurious["specificity"] == pytest.approx(1 - 27 / 512)
    with pytest.raises(ValueError, match="same 3D shape"):
        case_region_metrics(blob[:4], blob, (1, 1, 1))
