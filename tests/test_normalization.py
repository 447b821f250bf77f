"""The z-score inside the brain mask: hand-worked values, ddof, outside the mask; why not MONAI's."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import NormalizeIntensity

from lightning_brats.data.preprocess import zscore_in_mask


def test_zscore_hand_worked_population_std_and_zero_outside():
    """Channel values 1, 2, 3, 4 in the mask: mean 2.5, population std sqrt(1.25) (ddof 0, not sqrt(5/3))."""
    image = np.zeros((1, 2, 2, 2), dtype=np.float32)
    image[0, 0] = [[1, 2], [3, 4]]
    image[0, 1] = [[7, 9], [0, 0]]  # outside the mask below: must come out 0, whatever its values
    mask = np.zeros((2, 2, 2), dtype=bool)
    mask[0] = True
    out = zscore_in_mask(image, mask)
    s = math.sqrt(1.25)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [[-1.5 / s, -0.5 / s], [0.5 / s, 1.5 / s]], rtol=1e-6)
    assert np.all(out[0, 1] == 0)


def test_zscore_matches_an_independent_float64_computation_over_the_shared_mask():
    """Each channel's mean and std over the voxels of the brain mask shared by all channels, zeros of one
    channel inside it included; float64 sums written out here (not numpy's mean/std)."""
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 100.0, size=(3, 9, 8, 7)).astype(np.float32)
    image[:, :2] = 0  # background
    image[1, 4, 4, :3] = 0  # zero in one modality inside the brain
    mask = np.any(image != 0, axis=0)
    out = zscore_in_mask(image, mask)
    for c in range(3):
        values = [float(v) for v in image[c][mask]]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        expected = np.where(mask, (image[c].astype(np.float64) - mean) / std, 0.0)
        np.testing.assert_allclose(out[c], expected, rtol=1e-5, atol=1e-5)
    assert np.all(out[:, ~mask] == 0)
    assert out[1, 4, 4, 0] < -1  # a zero inside the brain is z-scored (far below the mean), not left at 0


def test_constant_channel_gives_zeros_not_nan():
    image = np.full((2, 3, 3, 3), 5.0, dtype=np.float32)
    out = zscore_in_mask(image, np.ones((3, 3, 3), dtype=bool))
    assert np.all(out == 0)


def test_monai_normalize_intensity_differs_where_one_modality_is_zero_inside_the_brain():
    """Why zscore_in_mask is not MONAI's NormalizeIntensity(nonzero=True, channel_wise=True): MONAI masks each
    channel by its own non-zeros, so a voxel zero in one modality inside the brain stays 0 and leaves the mean."""
    image = np.zeros((2, 1, 1, 4), dtype=np.float32)
    image[0, 0, 0] = [0, 2, 4, 6]  # the first voxel is zero in this modality only
    image[1, 0, 0] = [1, 1, 3, 3]
    mask = np.any(image != 0, axis=0)
    ours = zscore_in_mask(image, mask)[0, 0, 0]
    monai = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(image.copy()))[0, 0, 0].numpy()
    s4 = math.sqrt(5.0)  # ours: values 0, 2, 4, 6: mean 3, population std sqrt(5)
    np.testing.assert_allclose(ours, [-3 / s4, -1 / s4, 1 / s4, 3 / s4], rtol=1e-6)
    s3 = math.sqrt(8 / 3)  # MONAI: values 2, 4, 6 only: mean 4, population std sqrt(8/3)
    np.testing.assert_allclose(monai, [0, -2 / s3, 0, 2 / s3], rtol=1e-6, atol=1e-7)
