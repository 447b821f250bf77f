"""Pictures of segmentations: an axial slice with ground-truth and prediction overlays."""

from __future__ import annotations

import numpy as np

#: Overlay colours (RGB) for the three BraTS regions, painted WT, then TC, then ET.
REGION_COLOURS = [(0, 200, 0), (255, 220, 0), (230, 30, 30)]
#: Their names, for captions and legends.
REGION_COLOUR_NAMES = ["green", "yellow", "red"]


def tumour_slice(target: np.ndarray) -> int:
    """Axial index (last axis) with the most voxels of the first region; the middle if empty.

    Args:
        target: ``(R, X, Y, Z)`` binary masks.
    """
    area = target[0].reshape(-1, target.shape[-1]).sum(0)
    return int(area.argmax()) if area.any() else target.shape[-1] // 2


def overlay(background: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend region masks onto a grey slice.

    Args:
        background: ``(X, Y)`` intensities (any scale; normalised to its 1-99th percentile).
        masks: ``(R, X, Y)`` binary masks, painted in order with :data:`REGION_COLOURS`.

    Returns:
        ``(Y, X, 3)`` uint8 RGB, rotated so that anterior is up for RAS-like BraTS volumes.
    """
    lo, hi = np.percentile(background, [1, 99]) if background.any() else (0.0, 1.0)
    grey = np.clip((background - lo) / max(hi - lo, 1e-8), 0, 1)
    rgb = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    for mask, colour in zip(masks, REGION_COLOURS):
        m = mask.astype(bool)
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(colour, dtype=np.float64)
    return np.rot90(rgb.astype(np.uint8))


def comparison_picture(image: np.ndarray, target: np.ndarray, pred: np.ndarray, channel: int = 0) -> np.ndarray:
    """Ground truth (left) and prediction (right) overlaid on one axial slice through the tumour.

    Args:
        image: ``(C, X, Y, Z)`` case image; ``channel`` selects the background (FLAIR).
        target: ``(R, X, Y, Z)`` ground-truth region masks.
        pred: ``(R, X, Y, Z)`` predicted region masks.

    Returns:
        ``(Y, 2 * X + 4, 3)`` uint8 RGB.
    """
    z = tumour_slice(target if target.any() else pred)
    left = overlay(image[channel, :, :, z], target[..., z])
    right = overlay(image[channel, :, :, z], pred[..., z])
    gap = np.full((left.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([left, gap, right], axis=1)
