"""Region metrics with the BraTS empty-mask conventions: Dice as a torchmetrics Metric for
validation, and per-case challenge metrics (Dice, HD95, sensitivity, specificity, volumes).

The per-case functions take ``(pred, target, spacing)``; :mod:`lightning_brats.evaluation.registry`
declares each (name, unit, better direction, label) and is what eval, compare and validation read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric


def region_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice per case and region with the BraTS convention.

    Args:
        pred: ``(B, R, *spatial)`` binary prediction.
        target: ``(B, R, *spatial)`` binary ground truth.

    Returns:
        ``(B, R)`` Dice in [0, 1]; 1 where both masks are empty, 0 where exactly one is.
    """
    pred, target = pred.bool().flatten(2), target.bool().flatten(2)
    intersection = (pred & target).sum(-1).double()
    total = pred.sum(-1).double() + target.sum(-1).double()
    return torch.where(total > 0, 2 * intersection / total.clamp(min=1), torch.ones_like(total))


class RegionDice(Metric):
    """Mean per-case Dice per region (BraTS convention), reduced across processes: the registry's
    ``dice`` (:func:`case_dice` per case) on batched tensors, its ``batched`` form used in validation.

    ``update(pred, target)`` with ``(B, R, *spatial)`` binary tensors; ``compute()``
    returns ``(R,)`` means over all cases seen.
    """

    full_state_update = False

    def __init__(self, num_regions: int) -> None:
        super().__init__()
        self.add_state("dice_sum", default=torch.zeros(num_regions, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("cases", default=torch.tensor(0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        dice = region_dice(pred, target)
        self.dice_sum += dice.sum(0)
        self.cases += dice.shape[0]

    def compute(self) -> torch.Tensor:
        return self.dice_sum / self.cases.clamp(min=1)


#: HD95 (mm) when exactly one of prediction and ground truth is empty: the BraTS convention
#: (the diagonal of the 240 x 240 x 155 mm BraTS volume).
EMPTY_HD95_MM = 373.13


def _masks(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays; an error unless they are the same 3D shape."""
    pred, target = np.asarray(pred).astype(bool, copy=False), np.asarray(target).astype(bool, copy=False)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and ground truth {target.shape} must be the same 3D shape")
    return pred, target


def case_dice(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Dice of one region in one case, as :func:`region_dice` (1 when both masks are empty, 0 when
    exactly one is); ``spacing`` is not used. Dimensionless, in [0, 1]."""
    pred, target = _masks(pred, target)
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(target))
    if n_pred == 0 and n_true == 0:
        return 1.0
    if n_pred == 0 or n_true == 0:
        return 0.0
    return 2 * int(np.count_nonzero(pred & target)) / (n_pred + n_true)


def case_hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance (mm) of one region in one case.

    MONAI's ``compute_hausdorff_distance`` with ``percentile=95`` (symmetric, surface voxels, in mm
    using ``spacing``); 0 when both masks are empty, :data:`EMPTY_HD95_MM` when exactly one is.
    """
    pred, target = _masks(pred, target)
    has_pred, has_true = bool(pred.any()), bool(target.any())
    if not has_pred and not has_true:
        return 0.0
    if not has_pred or not has_true:
        return EMPTY_HD95_MM
    from monai.metrics import compute_hausdorff_distance

    return float(
        compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None], include_background=True,
            percentile=95, spacing=[float(s) for s in spacing],
        )[0, 0]
    )


def case_sensitivity(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """True-positive rate TP / (TP + FN) of one region in one case; 1 when the ground truth is empty
    (nothing to miss). Dimensionless, in [0, 1]; ``spacing`` is not used."""
    pred, target = _masks(pred, target)
    n_true = int(np.count_nonzero(target))
    return int(np.count_nonzero(pred & target)) / n_true if n_true else 1.0


def case_specificity(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """True-negative rate TN / (TN + FP) of one region in one case, over the whole volume; 1 when
    the region fills the volume. Dimensionless, in [0, 1]; ``spacing`` is not used."""
    pred, target = _masks(pred, target)
    fp = int(np.count_nonzero(pred & ~target))
    tn = pred.size - int(np.count_nonzero(pred | target))
    return tn / (tn + fp) if tn + fp else 1.0


def volume_pred_ml(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume (mL) of the predicted region: voxels times the voxel volume ``prod(spacing)`` mm^3 / 1000."""
    pred, _ = _masks(pred, target)
    return int(np.count_nonzero(pred)) * (float(np.prod(spacing)) / 1000.0)


def volume_true_ml(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume (mL) of the ground-truth region: voxels times the voxel volume ``prod(spacing)`` mm^3 / 1000."""
    _, target = _masks(pred, target)
    return int(np.count_nonzero(target)) * (float(np.prod(spacing)) / 1000.0)


def case_region_metrics(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Challenge metrics of one region in one case, BraTS conventions (the ``legacy`` definition).

    :func:`case_dice` (as :func:`region_dice`), :func:`case_hd95` (MONAI's
    ``compute_hausdorff_distance`` with ``percentile=95``, in mm using ``spacing``),
    :func:`case_sensitivity`, :func:`case_specificity`, :func:`volume_pred_ml` and
    :func:`volume_true_ml`: the functions :mod:`lightning_brats.evaluation.registry` registers. Both
    masks empty: Dice 1, HD95 0; exactly one empty: Dice 0, HD95 :data:`EMPTY_HD95_MM`. Sensitivity
    is 1 when the ground truth is empty (nothing to miss); specificity is over the whole volume.

    Args:
        pred: ``(X, Y, Z)`` binary prediction.
        target: ``(X, Y, Z)`` binary ground truth, same shape.
        spacing: voxel size in mm, 3 values.

    Returns:
        ``{"dice", "hd95" (mm), "sensitivity", "specificity", "volume_pred_ml", "volume_true_ml"}``.

    Raises:
        ValueError: the shapes differ or the masks are not 3D.
    """
    pred, target = _masks(pred, target)
    return {
        "dice": case_dice(pred, target, spacing),
        "hd95": case_hd95(pred, target, spacing),
        "sensitivity": case_sensitivity(pred, target, spacing),
        "specificity": case_specificity(pred, target, spacing),
        "volume_pred_ml": volume_pred_ml(pred, target, spacing),
        "volume_true_ml": volume_true_ml(pred, target, spacing),
    }
