"""Losses for region-based (multi-label, sigmoid) segmentation."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss, DiceLoss
from torch import nn


class DiceBCELoss(nn.Module):
    """Soft Dice + binary cross-entropy, one sigmoid output per region (nnU-Net's BraTS setup).

    MONAI's ``DiceCELoss`` applies softmax cross-entropy to multi-channel input, which is
    wrong for overlapping regions (WT contains TC contains ET); this combines MONAI's
    sigmoid ``DiceLoss`` with ``BCEWithLogitsLoss`` per voxel and region.

    With ``batch_dice`` (the default) each region's Dice pools the voxels of the whole batch,
    ``1 - mean_r (2 sum_{b,v} p t + s) / (sum_{b,v} p + sum_{b,v} t + s)``, as nnU-Net's
    "batch Dice" (Isensee et al. 2020, BraTS 2020: ``DC_and_BCE_loss(batch_dice=True)`` of
    ``nnUNetTrainerV2BraTSRegions_*_BD``); without it the Dice is computed per sample and region
    and then averaged, ``1 - mean_{b,r} (...)`` (nnU-Net's default for its BraTS region trainer).
    A sample without a region then scores near 0 rather than being absorbed by the batch.

    Args:
        dice_weight: weight of the Dice term.
        bce_weight: weight of the BCE term.
        batch_dice: Dice over the whole batch (``True``) or per sample (``False``).
        smooth: ``s`` above, added to numerator and denominator (nnU-Net's BraTS trainers: 0;
            here 1e-5 so an empty region and an empty prediction give a Dice of 1, not 0/0).

    Input: logits ``(B, R, *spatial)``; target ``(B, R, *spatial)`` in {0, 1}. Returns a scalar.
    """

    def __init__(
        self, dice_weight: float = 1.0, bce_weight: float = 1.0, batch_dice: bool = True, smooth: float = 1e-5
    ) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, batch=batch_dice, smooth_nr=smooth, smooth_dr=smooth)
        self.bce = nn.BCEWithLogitsLoss()
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        self.batch_dice = batch_dice

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
