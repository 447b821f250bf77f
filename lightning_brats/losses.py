"""Losses for region-based (multi-label, sigmoid) segmentation."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss, DiceLoss
from torch import nn


class DiceBCELoss(nn.Module):
    """Soft Dice + binary cross-entropy, one sigmoid output per region (nnU-Net's BraTS setup).

    MONAI's ``DiceCELoss`` applies softmax cross-entropy to multi-channel input, which is
    wrong for overlapping regions (WT contains TC contains ET); this combines MONAI's
    sigmoid ``DiceLoss`` (batch Dice, as nnU-Net) with ``BCEWithLogitsLoss`` per voxel and region.

    Args:
        dice_weight: weight of the Dice term.
        bce_weight: weight of the BCE term.

    Input: logits ``(B, R, *spatial)``; target ``(B, R, *spatial)`` in {0, 1}. Returns a scalar.
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.bce = nn.BCEWithLogitsLoss()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's deep-supervision weights: halving per scale, normalised to sum 1.

    nnU-Net (Isensee et al. 2021) also gives its lowest decoder output weight 0; our U-Net does
    not compute that output (see :class:`~lightning_brats.models.UNet`), so all weights here are used.

    Args:
        num_outputs: outputs, full resolution first.

    Returns:
        ``num_outputs`` weights, e.g. ``[4/7, 2/7, 1/7]`` for 3.
    """
    raw = [0.5**k for k in range(num_outputs)]
    return [w / sum(raw) for w in raw]


def deep_supervision_loss(loss: nn.Module, num_outputs: int) -> nn.Module:
    """Wrap ``loss`` for a list of outputs at decreasing scales (MONAI ``DeepSupervisionLoss``).

    The targets are downsampled (nearest neighbour) to each output's size, and the losses are
    summed with :func:`deep_supervision_weights`. A single tensor is scored by ``loss`` alone.
    """
    return DeepSupervisionLoss(loss, weights=deep_supervision_weights(num_outputs))
