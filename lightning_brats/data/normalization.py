"""The tables of preprocessing choices: ``data.normalization`` (name -> function) and ``data.crop``.

Enters: a ``(C, X, Y, Z)`` image and its brain mask. Leaves: the normalised image. Its own module so
that :mod:`~lightning_brats.data.settings` (which checks a config's names against these tables) and
:mod:`~lightning_brats.data.preprocess` (which applies them, and reads the settings) both import it
without importing each other.
"""

from __future__ import annotations

import numpy as np


def _per_channel_in_mask(image: np.ndarray, mask: np.ndarray, scale) -> np.ndarray:
    """Apply ``scale(values) -> values`` to each channel's voxels inside ``mask``; zero outside."""
    out = np.zeros_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        values = image[c][mask]
        if values.size:
            out[c][mask] = scale(values)
    return out


def zscore_in_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Z-score each channel using the mean and std of voxels inside ``mask``; zero outside.

    The std is the population one (ddof 0, as nnU-Net's ``ZScoreNormalization``), floored at 1e-8.
    Not MONAI's ``NormalizeIntensity(nonzero=True, channel_wise=True)``: it masks each channel by its own
    non-zeros, not by the brain mask shared by the modalities (BraTS 2018: up to 5e5 voxels, 3.8 SD apart).

    Args:
        image: ``(C, X, Y, Z)`` float32.
        mask: ``(X, Y, Z)`` bool brain mask.
    """
    return _per_channel_in_mask(image, mask, lambda v: (v - v.mean()) / max(float(v.std()), 1e-8))


def minmax_in_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale each channel to [0, 1] using the min and max of voxels inside ``mask``; zero outside.

    Args:
        image: ``(C, X, Y, Z)`` float32.
        mask: ``(X, Y, Z)`` bool brain mask.
    """
    return _per_channel_in_mask(image, mask, lambda v: (v - v.min()) / max(float(v.max() - v.min()), 1e-8))


#: ``data.normalization`` options: name -> function ``(image (C, X, Y, Z), brain mask) -> image``.
NORMALIZATIONS = {"zscore": zscore_in_mask, "minmax": minmax_in_mask}

#: ``data.crop`` options: the brain's bounding box, or a fixed-size box in the middle of the grid.
CROPS = ("nonzero", "center")
