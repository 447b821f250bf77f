"""Region Dice with the BraTS empty-mask convention, as a torchmetrics Metric."""

from __future__ import annotations

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
