"""Whole-case inference: Gaussian sliding window (3D) or slice by slice (2D)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn


def predict_logits(
    net: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
) -> torch.Tensor:
    """Logits for whole cases with MONAI's Gaussian-weighted sliding window.

    A 3D network (``len(patch_size) == 3``) slides over the volume in patches; a 2D network
    runs on every axial slice, each slice covered by a 2D sliding window of the slice size.

    Args:
        net: maps ``(N, C, *patch_size)`` to ``(N, R, *patch_size)`` logits.
        image: ``(B, C, X, Y, Z)``.
        patch_size: window size in voxels, 2 or 3 values.
        overlap: fraction of overlap between windows (nnU-Net: 0.5).
        sw_batch_size: windows (3D) or slices (2D) per forward pass.

    Returns:
        ``(B, R, X, Y, Z)`` logits.
    """
    if len(patch_size) == 3:
        return sliding_window_inference(image, list(patch_size), sw_batch_size, net, overlap, mode="gaussian")
    b, c, x, y, z = image.shape
    slices = image.permute(0, 4, 1, 2, 3).reshape(b * z, c, x, y)
    logits = sliding_window_inference(slices, list(patch_size), sw_batch_size, net, overlap, mode="gaussian")
    return logits.reshape(b, z, -1, x, y).permute(0, 2, 3, 4, 1)
