"""Region metrics with the BraTS empty-mask conventions: Dice as a torchmetrics Metric for
validation, and per-case challenge metrics (Dice, HD95, sensitivity, specificity, volumes)."""

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
    """Mean per-case Dice per region (BraTS convention), reduced across processes.

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


def case_region_metrics(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Challenge metrics of one region in one case, BraTS conventions.

    Dice follows :func:`region_dice`; HD95 is MONAI's ``compute_hausdorff_distance`` with
    ``percentile=95`` (symmetric, surface voxels, in mm using ``spacing``). Both masks empty:
    Dice 1, HD95 0; exactly one empty: Dice 0, HD95 :data:`EMPTY_HD95_MM`. Sensitivity is 1 when
    the ground truth is empty (nothing to miss); specificity is over the whole volume.

    Args:
        pred: ``(X, Y, Z)`` binary prediction.
        target: ``(X, Y, Z)`` binary ground truth, same shape.
        spacing: voxel size in mm, 3 values.

    Returns:
        ``{"dice", "hd95" (mm), "sensitivity", "specificity", "volume_pred_ml", "volume_true_ml"}``.

    Raises:
        ValueError: the shapes differ or the masks are not 3D.
    """
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"prediction {pred.shape} and ground truth {target.shape} must be the same 3D shape")
    tp = int(np.count_nonzero(pred & target))
    fp = int(np.count_nonzero(pred & ~target))
    fn = int(np.count_nonzero(~pred & target))
    tn = pred.size - tp - fp - fn
    n_pred, n_true = tp + fp, tp + fn
    if n_pred == 0 and n_true == 0:
        dice, hd95 = 1.0, 0.0
    elif n_pred == 0 or n_true == 0:
        dice, hd95 = 0.0, EMPTY_HD95_MM
    else:
        from monai.metrics import compute_hausdorff_distance

        dice = 2 * tp / (n_pred + n_true)
        hd95 = float(
            compute_hausdorff_distance(
                torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None], include_background=True,
                percentile=95, spacing=[float(s) for s in spacing],
            )[0, 0]
        )
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {
        "dice": dice,
        "hd95": hd95,
        "sensitivity": tp / n_true if n_true else 1.0,
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
        "volume_pred_ml": n_pred * voxel_ml,
        "volume_true_ml": n_true * voxel_ml,
    }
