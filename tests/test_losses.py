"""DiceBCELoss against values worked out by hand: batch Dice (nnU-Net) and per-sample Dice."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_brats.training.losses import DiceBCELoss

# logits whose sigmoids are exact: 0 -> 1/2, ln 3 -> 3/4, -ln 3 -> 1/4
L3 = math.log(3.0)
# 2 samples, 1 region, 2 voxels: probabilities [[3/4, 1/4], [1/4, 1/4]], targets [[1, 0], [0, 0]]
LOGITS = torch.tensor([[[L3, -L3]], [[-L3, -L3]]])
TARGET = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
# BCE: every voxel has probability 3/4 of its true class -> -ln(3/4) each
BCE = -math.log(0.75)


def test_batch_dice_pools_the_batch():
    # intersection 3/4, sum of probabilities 3/2, target voxels 1 -> Dice 2(3/4)/(3/2 + 1) = 0.6
    loss = DiceBCELoss(batch_dice=True, smooth=0.0)(LOGITS, TARGET)
    assert loss.item() == pytest.approx((1 - 0.6) + BCE, abs=1e-6)


def test_per_sample_dice_averages_samples():
    # sample 0: 2(3/4)/(1 + 1) = 0.75; sample 1 has no target: (0 + s)/(1/2 + s) ~ 0 -> mean 0.375
    loss = DiceBCELoss(batch_dice=False, smooth=1e-5)(LOGITS, TARGET)
    sample1 = 1e-5 / (0.5 + 1e-5)
    sample0 = (1.5 + 1e-5) / (2.0 + 1e-5)
    assert loss.item() == pytest.approx(1 - (sample0 + sample1) / 2 + BCE, abs=1e-6)


def test_weights_scale_the_terms():
    loss = DiceBCELoss(dice_weight=2.0, bce_weight=0.5, batch_dice=True, smooth=0.0)(LOGITS, TARGET)
    assert loss.item() == pytest.approx(2 * 0.4 + 0.5 * BCE, abs=1e-6)


def test_both_forms_agree_for_one_sample_and_differ_for_a_batch():
    one = (LOGITS[:1], TARGET[:1])
    assert DiceBCELoss(batch_dice=True)(*one).item() == pytest.approx(DiceBCELoss(batch_dice=False)(*one).item())
    assert DiceBCELoss(batch_dice=True)(LOGITS, TARGET).item() < DiceBCELoss(batch_dice=False)(LOGITS, TARGET).item()
