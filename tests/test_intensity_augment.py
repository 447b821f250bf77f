"""nnU-Net's intensity augmentations (augment=nnunet): each transform against an independent computation,
the draws against their stated distributions, and the CPU and batch paths against each other."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_brats.data.batch_augment import BatchAugmentation
from lightning_brats.data.intensity_augment import (
    NNUNET_PROBABILITIES,
    IntensityAugmentation,
    gamma_retaining_stats,
    gaussian_blur,
    simulate_low_resolution,
)
from lightning_brats.data.sampling import Augmentation
from tests.conftest import compose_config

OFF = {"flip": False, "intensity": False, "spatial_prob": 0.0}  # the older transforms off: only nnU-Net's set


def _image(shape, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _only(name: str, batch: int, channels: int, dims: int, seed: int = 0) -> tuple[IntensityAugmentation, dict]:
    """The transform ``name`` on every sample (probability 1), the others off, and a batch's parameters."""
    aug = IntensityAugmentation(**{f"{name}_prob": 1.0})
    return aug, aug.draw(batch, channels, dims, torch.Generator().manual_seed(seed))


def test_blur_matches_scipy_gaussian_filter_with_each_channels_own_sigmas():
    x = _image((2, 3, 12, 10, 9))
    aug, params = _only("blur", 2, 3, 3)
    out = aug.apply(x, params).numpy()
    for b in range(2):
        for c in range(3):
            sigma = params["blur_sigma"][b, c].numpy().astype(np.float64)
            if params["blur_channels"][b, c]:
                # 7 taps (radius 3) with torch's reflect padding = scipy's "mirror"
                expected = ndimage.gaussian_filter(x[b, c].numpy().astype(np.float64), sigma, mode="mirror", radius=3)
            else:
                expected = x[b, c].numpy()
            np.testing.assert_allclose(out[b, c], expected, atol=1e-5)
    assert params["blur_channels"].any() and not params["blur_channels"].all()  # both kinds were checked
    assert ((params["blur_sigma"] >= 0.5) & (params["blur_sigma"] <= 1.0)).all()


def test_gaussian_blur_2d_per_axis_sigma():
    x = _image((1, 2, 16, 11))
    sigma = torch.tensor([[[0.5, 1.0], [0.9, 0.6]]])
    out = gaussian_blur(x, sigma).numpy()
    for c in range(2):
        expected = ndimage.gaussian_filter(x[0, c].numpy().astype(np.float64), sigma[0, c].numpy().astype(np.float64),
                                           mode="mirror", radius=3)
        np.testing.assert_allclose(out[0, c], expected, atol=1e-5)


def test_gamma_keeps_mean_and_sd_and_matches_a_numpy_computation():
    x = _image((2, 2, 8, 8, 8), seed=3)
    gamma = torch.tensor([[0.8, 1.4], [1.0, 0.7]])
    out = gamma_retaining_stats(x, gamma).numpy()
    for b in range(2):
        for c in range(2):
            v = x[b, c].numpy().astype(np.float64)
            y = ((v - v.min()) / (v.max() - v.min())) ** float(gamma[b, c]) * (v.max() - v.min()) + v.min()
            y = (y - y.mean()) / y.std(ddof=1) * v.std(ddof=1) + v.mean()
            np.testing.assert_allclose(out[b, c], y, atol=1e-4)
            assert out[b, c].mean() == pytest.approx(v.mean(), abs=1e-4)
            assert out[b, c].std(ddof=1) == pytest.approx(v.std(ddof=1), rel=1e-4)
    np.testing.assert_allclose(out[1, 0], x[1, 0].numpy(), atol=1e-4)  # gamma 1 changes nothing


def test_inverted_gamma_is_gamma_of_the_negated_image():
    x = _image((1, 1, 10, 10), seed=4)
    aug, params = _only("inverted_gamma", 1, 1, 2)
    g = float(params["inverted_gamma_value"][0, 0])
    v = -x[0, 0].numpy().astype(np.float64)
    y = ((v - v.min()) / (v.max() - v.min())) ** g * (v.max() - v.min()) + v.min()
    y = -((y - y.mean()) / y.std(ddof=1) * v.std(ddof=1) + v.mean())
    np.testing.assert_allclose(aug.apply(x, params)[0, 0].numpy(), y, atol=1e-4)


def test_contrast_and_brightness_match_numpy():
    x = _image((3, 4, 6, 7, 5), seed=5)
    aug, params = _only("contrast", 3, 4, 3)
    out = aug.apply(x, params).numpy()
    for b in range(3):
        for c in range(4):
            v = x[b, c].numpy().astype(np.float64)
            expected = np.clip((v - v.mean()) * float(params["contrast"][b, c]) + v.mean(), v.min(), v.max())
            np.testing.assert_allclose(out[b, c], expected, atol=1e-5)
    aug, params = _only("brightness", 3, 4, 3)
    expected = x.numpy() * params["brightness"].numpy()[:, :, None, None, None]
    np.testing.assert_allclose(aug.apply(x, params).numpy(), expected, rtol=1e-6)


def test_noise_is_one_field_for_all_channels_with_the_drawn_sd():
    x = _image((2, 4, 24, 24, 24), seed=6)
    aug, params = _only("noise", 2, 4, 3)
    added = aug.apply(x, params, torch.Generator().manual_seed(1)).numpy() - x.numpy()
    for b in range(2):
        for c in range(1, 4):
            np.testing.assert_allclose(added[b, c], added[b, 0], atol=1e-5)
        assert added[b, 0].std() == pytest.approx(float(params["noise_sd"][b]), rel=0.03)
    assert ((params["noise_sd"] >= 0) & (params["noise_sd"] <= 0.1)).all()


def _linear_resize_1d(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` to ``size`` (half-pixel centres, edges clamped), written out here."""
    n = a.shape[axis]
    src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = src - i0
    lo, hi = np.take(a, i0, axis=axis), np.take(a, i1, axis=axis)
    shape = [1] * a.ndim
    shape[axis] = size
    return lo * (1 - w.reshape(shape)) + hi * w.reshape(shape)


def test_low_resolution_is_nearest_down_then_linear_up():
    x = _image((8, 12), seed=7)
    out = simulate_low_resolution(x, 0.5).numpy()
    # nearest-exact to 4 x 6 picks the odd voxels; then linear back up along each axis
    coarse = x.numpy()[1::2, 1::2].astype(np.float64)
    expected = _linear_resize_1d(_linear_resize_1d(coarse, 8, 0), 12, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert simulate_low_resolution(torch.full((9, 9, 9), 2.5), 0.6).allclose(torch.tensor(2.5))


def test_draws_follow_the_stated_probabilities_and_ranges():
    n = 20000
    aug = IntensityAugmentation(**NNUNET_PROBABILITIES)
    params = aug.draw(n, 4, 3, torch.Generator().manual_seed(9))
    for name, p in NNUNET_PROBABILITIES.items():
        share = params["do_" + name.removesuffix("_prob")].float().mean().item()
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), name
    for key, (low, high) in {"brightness": (0.75, 1.25), "contrast": (0.75, 1.25), "gamma_value": (0.7, 1.5)}.items():
        v = params[key]
        assert low <= v.min() and v.max() <= high
        # nnU-Net's BGContrast: half the draws below 1, uniform on each side
        assert (v < 1).float().mean().item() == pytest.approx(0.5, abs=0.01)
        below = v[v < 1]
        assert below.mean().item() == pytest.approx((low + 1) / 2, abs=0.005)
    assert params["blur_channels"].float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert params["low_res_scale"].min() >= 0.5 and params["low_res_scale"].max() <= 1.0


def test_cpu_and_batch_paths_change_samples_alike():
    """Over many samples the two paths (per sample from NumPy streams, per batch from one torch generator)
    change images by the same distribution of amounts, per transform mix; labels stay untouched."""
    n, shape = 600, (4, 16, 16)
    image = _image((n, *shape), seed=11)
    target = (torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    cpu = Augmentation(**OFF, **NNUNET_PROBABILITIES)
    cpu_out, cpu_targets = zip(*(cpu(image[i].numpy(), target[i].numpy(), np.random.default_rng((8, i))) for i in range(n)))
    batch_out, batch_target = BatchAugmentation(**OFF, **NNUNET_PROBABILITIES)(image, target, torch.Generator().manual_seed(8))
    np.testing.assert_array_equal(np.stack(cpu_targets), target.numpy())
    assert torch.equal(batch_target, target)
    cpu_change = np.abs(np.stack(cpu_out) - image.numpy()).mean(axis=(2, 3)).ravel()
    batch_change = (batch_out - image).abs().mean(dim=(2, 3)).numpy().ravel()
    for change in (cpu_change, batch_change):  # a share of channels untouched: no transform drew them
        untouched = np.mean(change < 1e-7)
        assert 0.15 < untouched < 0.6
    grid = np.sort(np.concatenate([cpu_change, batch_change]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)
    ks = np.abs(cdf(cpu_change) - cdf(batch_change)).max()
    critical = math.sqrt(-0.5 * math.log(1e-3 / 2)) * math.sqrt(2 / (n * 4))
    assert ks < critical


def test_all_off_leaves_the_cpu_stream_and_result_unchanged():
    image, target = _image((4, 10, 10, 10)).numpy(), np.zeros((3, 10, 10, 10), np.float32)
    plain = Augmentation(spatial_prob=0.0)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    plain(image, target, rng_a)
    plain.draw(rng_b, 4, 3)  # what the older transforms draw
    assert rng_a.random() == rng_b.random()  # nothing more was drawn
    assert not plain.intensity_set.enabled


def test_a_bad_probability_names_its_key():
    with pytest.raises(ValueError, match=r"data\.augment\.gamma_prob=1\.5"):
        Augmentation(gamma_prob=1.5)


def test_augment_nnunet_config_reaches_both_paths(tmp_path, phantom_root):
    from hydra.utils import instantiate

    cfg = compose_config([f"data.root={phantom_root}", "augment=nnunet", "data.augment.device=batch"], tmp_path)
    for name, p in NNUNET_PROBABILITIES.items():
        assert cfg.data.augment[name] == p
    datamodule = instantiate(cfg.data)
    assert datamodule.augment.intensity_set == IntensityAugmentation(**NNUNET_PROBABILITIES)
    assert datamodule.batch_augment.intensity_set == IntensityAugmentation(**NNUNET_PROBABILITIES)
    plain = instantiate(compose_config([f"data.root={phantom_root}"], tmp_path / "plain").data)
    assert not plain.augment.intensity_set.enabled


def test_brats_nnunet_trains_with_nnunets_intensity_set_and_tilde_augment_removes_it(tmp_path):
    root = "data.root=unused"
    cfg = compose_config(["experiment=brats_nnunet", root], tmp_path)
    assert {k: cfg.data.augment[k] for k in NNUNET_PROBABILITIES} == NNUNET_PROBABILITIES
    assert cfg.data.augment.spatial_prob == 0.3  # the recipe's own settings stay
    cfg = compose_config(["experiment=brats_nnunet", "~augment", root], tmp_path / "off")
    assert all(cfg.data.augment[k] == 0.0 for k in NNUNET_PROBABILITIES)
    cfg = compose_config(["experiment=brats_cpu", root], tmp_path / "cpu")  # the CPU preset as recorded
    assert all(cfg.data.augment[k] == 0.0 for k in NNUNET_PROBABILITIES)


def test_every_probability_default_is_written_once():
    """The zeros live in IntensityProbabilities only (Augmentation and IntensityAugmentation inherit them, the
    config gets them from it), nnU-Net's values in conf/augment/nnunet.yaml only (NNUNET_PROBABILITIES reads it)."""
    from dataclasses import fields
    from pathlib import Path

    import yaml

    from lightning_brats.configs import CONFIG_DIR
    from lightning_brats.data.intensity_augment import PROBABILITY_FIELDS, IntensityProbabilities

    assert PROBABILITY_FIELDS == ("noise_prob", "blur_prob", "brightness_prob", "contrast_prob", "low_res_prob",
                                  "inverted_gamma_prob", "gamma_prob")
    for cls in (IntensityAugmentation, Augmentation):
        assert issubclass(cls, IntensityProbabilities) and "noise_prob" not in inspect.get_annotations(cls)
    stating = []
    for path in sorted(Path(CONFIG_DIR).rglob("*.yaml")):
        text = yaml.safe_load(path.read_text()) or {}
        data = text.get("data") if isinstance(text.get("data"), dict) else text
        augment = text if path.parent.name == "augment" else data.get("augment")
        augment = augment if isinstance(augment, dict) else {}
        stating += [f"{path.relative_to(CONFIG_DIR)}: {k}" for k in PROBABILITY_FIELDS if k in augment]
    # only the recipes that change them: nnU-Net's set and NVIDIA's entry (experiment=brats_nvidia)
    assert {s.split(":")[0] for s in stating} == {"augment/nnunet.yaml", "experiment/brats_nvidia.yaml"}
    assert NNUNET_PROBABILITIES == yaml.safe_load((Path(CONFIG_DIR) / "augment" / "nnunet.yaml").read_text())
    defaults = {f.name: f.default for f in fields(IntensityProbabilities)}
    cfg = compose_config(["data.root=unused"], Path("/nonexistent"))
    assert {k: cfg.data.augment[k] for k in PROBABILITY_FIELDS} == defaults == dict.fromkeys(PROBABILITY_FIELDS, 0.0)


def test_the_background_stays_zero_in_both_paths():
    """Voxels outside the brain (0 in every channel) are 0 again after the set, as nnU-Net's MaskImageTransform
    leaves them, whatever noise, blur, contrast, low resolution and gamma did; the brain itself changes."""
    every = {name: 1.0 for name in NNUNET_PROBABILITIES}
    image = _image((3, 4, 20, 20), seed=12).numpy()
    image[:, :, :5] = 0.0  # a band of background in every sample
    target = np.zeros((3, 3, 20, 20), np.float32)
    cpu = np.stack([Augmentation(**OFF, **every)(image[i], target[i], np.random.default_rng(i))[0] for i in range(3)])
    batch, _ = BatchAugmentation(**OFF, **every)(torch.from_numpy(image), torch.from_numpy(target),
                                                 torch.Generator().manual_seed(3))
    for out in (cpu, batch.numpy()):
        assert (out[:, :, :5] == 0).all()
        assert np.abs(out[:, :, 5:] - image[:, :, 5:]).mean() > 0.05
    # with the older intensity shift on, the background is still set back to 0 (it was 0 before the shift)
    shifted = Augmentation(flip=False, spatial_prob=0.0, **every)
    out = np.stack([shifted(image[i], target[i], np.random.default_rng(i))[0] for i in range(3)])
    assert (out[:, :, :5] == 0).all()


def test_blur_refuses_axes_below_its_padding():
    aug, params = _only("blur", 1, 1, 2)
    params["blur_channels"][:] = True
    with pytest.raises(ValueError, match=r"axis >= 4 voxels"):
        aug.apply(_image((1, 1, 3, 12)), params)
