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


def flip_axes_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the flipped axes of a ``(B, C, X, Y, Z)`` tensor for flip test-time augmentation.

    A 3D network flips X, Y and Z (8 combinations, the identity first); a 2D network runs on
    axial slices, so only the in-plane axes X and Y are flipped (4 combinations), as nnU-Net's
    mirroring does for each configuration.

    Args:
        spatial_dims: 2 or 3, the network's dimensionality.

    Returns:
        tensor dimensions to flip per pass, e.g. ``[(), (2,), (3,), (2, 3), ...]``.
    """
    axes = (2, 3, 4)[:spatial_dims]
    return [tuple(a for bit, a in enumerate(axes) if mask >> bit & 1) for mask in range(2**spatial_dims)]


def predict_probabilities(
    net: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    flip_tta: bool = False,
) -> torch.Tensor:
    """Per-region probabilities for whole cases, optionally averaged over flipped copies.

    Each pass runs :func:`predict_logits` on a flipped copy of the image, flips the logits back
    and applies the sigmoid; the probabilities of all passes are averaged (nnU-Net's test-time
    mirroring, Isensee et al. 2021).

    Args:
        net: maps ``(N, C, *patch_size)`` to ``(N, R, *patch_size)`` logits, in eval mode.
        image: ``(B, C, X, Y, Z)``.
        patch_size: window size in voxels; 3 values for a 3D network, 2 for a 2D one.
        overlap: fraction of overlap between sliding windows.
        sw_batch_size: windows (3D) or slices (2D) per forward pass.
        flip_tta: average over all flip combinations (8 in 3D, 4 in 2D) instead of one pass.

    Returns:
        ``(B, R, X, Y, Z)`` float32 probabilities in [0, 1].
    """
    combos = flip_axes_combinations(len(patch_size)) if flip_tta else [()]
    total = None
    for dims in combos:
        flipped = torch.flip(image, dims) if dims else image
        logits = predict_logits(net, flipped, patch_size, overlap, sw_batch_size)
        probs = torch.sigmoid(logits.float())
        probs = torch.flip(probs, dims) if dims else probs
        total = probs if total is None else total + probs
    return total / len(combos)
