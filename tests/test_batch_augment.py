"""Batch augmentation on the training device (data.augment.device=batch) against the per-sample CPU path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from lightning_brats.data.batch_augment import (
    BatchAugmentation,
    affine_grid,
    displacement_to_grid,
    elastic_displacement,
    elastic_grid_offsets,
    rotation_matrices,
)
from lightning_brats.data.sampling import Augmentation

N = 4000  # parameter draws per path: frequencies within ~0.03 at 4 sigma, KS distance critical value 0.044


def _ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)
    return float(np.abs(cdf(a) - cdf(b)).max())


def _ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    """Critical KS distance for two samples at level ``alpha`` (asymptotic: c(alpha) sqrt((n+m)/(nm)))."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


@pytest.mark.parametrize("dims", [2, 3])
def test_both_paths_draw_the_same_distributions(dims):
    settings = {"spatial_prob": 0.3, "rotate_deg": 20.0, "scale": 0.1}
    channels = 4
    cpu = [Augmentation(**settings).draw(np.random.default_rng((5, i)), channels, dims) for i in range(N)]
    batch = BatchAugmentation(**settings).draw(N, channels, dims, torch.Generator().manual_seed(5))
    batch = {k: v.numpy() for k, v in batch.items()}
    sigma = lambda p: 4 * math.sqrt(p * (1 - p) / N)
    # how often each transform is applied: both near the stated probability
    for stated, cpu_share, batch_share in [
        (0.3, np.mean([c["spatial"] for c in cpu]), batch["spatial"].mean()),
        (0.5, np.mean([c["factors"] is not None for c in cpu]), batch["do_scale"].mean()),
        (0.5, np.mean([c["shifts"] is not None for c in cpu]), batch["do_shift"].mean()),
        *[(0.5, np.mean([c["flips"][a] for c in cpu]), batch["flips"][:, a].mean()) for a in range(dims)],
    ]:
        assert abs(cpu_share - stated) < sigma(stated) and abs(batch_share - stated) < sigma(stated)
    # the values, where applied: the same distribution (KS), inside the stated ranges
    angle = math.radians(20.0)
    pairs = {
        "angles": (np.concatenate([c["angles"] for c in cpu if c["spatial"]]), batch["angles"][batch["spatial"]].ravel(), angle),
        "scales": (np.concatenate([c["scales"] for c in cpu if c["spatial"]]) - 1, batch["scales"][batch["spatial"]].ravel() - 1, 0.1),
        "factors": (np.concatenate([c["factors"] for c in cpu if c["factors"] is not None]) - 1,
                    batch["factors"][batch["do_scale"]].ravel() - 1, 0.1),
        "shifts": (np.concatenate([c["shifts"] for c in cpu if c["shifts"] is not None]),
                   batch["shifts"][batch["do_shift"]].ravel(), 0.1),
    }
    assert len(pairs["angles"][0]) == (1 if dims == 2 else 3) * sum(c["spatial"] for c in cpu)
    for name, (a, b, bound) in pairs.items():
        assert np.abs(a).max() <= bound + 1e-6 and np.abs(b).max() <= bound + 1e-6, name
        assert _ks_distance(a, b) < _ks_critical(len(a), len(b)), name
        # and both uniform on [-bound, bound]: a quarter of the values beyond +-bound/2 on each side
        assert abs(np.mean(a > bound / 2) - 0.25) < 0.05 and abs(np.mean(b > bound / 2) - 0.25) < 0.05, name


@pytest.mark.parametrize("spatial", [(20, 24, 28), (30, 26)])
def test_batch_affine_resamples_as_monai_affine(spatial):
    """The one-grid_sample affine equals MONAI's ``Affine`` (the CPU path's) for the same parameters."""
    from monai.transforms import Affine

    rng = np.random.default_rng(0)
    dims = len(spatial)
    image = rng.normal(size=(3, 2, *spatial)).astype(np.float32)
    label = (ndimage.gaussian_filter(rng.normal(size=(3, 1, *spatial)), 2) > 0).astype(np.float32)
    angles = rng.uniform(-0.3, 0.3, (3, 1 if dims == 2 else 3))
    scales = 1 + rng.uniform(-0.15, 0.15, (3, dims))
    params = {"spatial": torch.tensor([True, False, True]), "angles": torch.tensor(angles), "scales": torch.tensor(scales)}
    aug = BatchAugmentation(flip=False, intensity=False, spatial_prob=1.0)
    out_image, out_label = aug.apply(torch.from_numpy(image), torch.from_numpy(label), params)
    for b in range(3):
        if not params["spatial"][b]:
            assert torch.equal(out_image[b], torch.from_numpy(image[b]))  # left alone
            continue
        ref = {}
        for name, array, mode in (("image", image[b], "bilinear"), ("label", label[b], "nearest")):
            affine = Affine(rotate_params=list(map(float, angles[b])), scale_params=list(map(float, scales[b])),
                            mode=mode, padding_mode="zeros", image_only=True)
            ref[name] = np.asarray(affine(array))
        np.testing.assert_allclose(out_image[b].numpy(), ref["image"], atol=1e-4)
        assert np.mean(out_label[b].numpy() == ref["label"]) > 0.999  # nearest: ties may round apart


@pytest.mark.parametrize("spatial", [(20, 24, 28), (30, 26)])
def test_cpu_path_affine_resamples_as_monai_affine(spatial):
    """The per-sample path's rotation and scaling (the batch path's grid_sample on one sample) equals MONAI's
    ``Affine``, which it replaced, for the same parameters."""
    from monai.transforms import Affine

    rng = np.random.default_rng(1)
    dims = len(spatial)
    image = rng.normal(size=(2, *spatial)).astype(np.float32)
    target = (ndimage.gaussian_filter(rng.normal(size=(3, *spatial)), 2) > 0).astype(np.float32)
    angles, scales = rng.uniform(-0.3, 0.3, 1 if dims == 2 else 3), 1 + rng.uniform(-0.15, 0.15, dims)
    out_image, out_target = Augmentation()._resample(image, target, {"spatial": True, "angles": angles, "scales": scales})
    for array, out, mode in ((image, out_image, "bilinear"), (target, out_target, "nearest")):
        affine = Affine(rotate_params=list(map(float, angles)), scale_params=list(map(float, scales)),
                        mode=mode, padding_mode="zeros", image_only=True)
        ref = np.asarray(affine(array))
        if mode == "bilinear":
            np.testing.assert_allclose(out, ref, atol=1e-4)
        else:
            assert np.mean(out == ref) > 0.999 and set(np.unique(out)) <= {0.0, 1.0}
    assert out_image.dtype == np.float32 and out_image.shape == image.shape


def test_rotation_matrices_are_rotations_in_monai_order():
    angles = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    m = rotation_matrices(angles)[0]
    torch.testing.assert_close(m @ m.T, torch.eye(3, dtype=torch.float64))
    # Rx(0.1) @ Ry(-0.2) @ Rz(0.3) written out
    a, b, c = 0.1, -0.2, 0.3
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64)
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]], dtype=torch.float64)
    rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(m, rx @ ry @ rz)


def test_identity_grid_returns_the_input():
    x = torch.randn(2, 3, 9, 10, 11)
    grid = affine_grid(torch.eye(3).expand(2, 3, 3), (9, 10, 11))
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spatial", [(9, 10, 11), (12, 7)])
def test_affine_grid_samples_the_input_at_the_matrix_times_the_centred_voxel(spatial):
    """Each grid point is where ``M @ (p - centre)`` lands, in grid_sample's normalised reversed axes,
    computed here voxel by voxel in float64 (independent of the broadcast construction)."""
    d = len(spatial)
    gen = torch.Generator().manual_seed(3)
    angles = torch.rand(2, 3 if d == 3 else 1, generator=gen) - 0.5
    matrices = rotation_matrices(angles) * (0.8 + 0.4 * torch.rand(2, 1, d, generator=gen))
    grid = affine_grid(matrices, spatial)
    assert grid.shape == (2, *spatial, d) and grid.is_contiguous()
    n = torch.tensor(spatial, dtype=torch.float64)
    index = torch.stack(torch.meshgrid(*[torch.arange(k, dtype=torch.float64) for k in spatial], indexing="ij"), -1)
    for b in range(2):
        source = (index - (n - 1) / 2) @ matrices[b].double().T + (n - 1) / 2  # input voxel index, array order
        expected = ((2 * source + 1) / n - 1).flip(-1)  # normalised, align_corners=False, reversed axes
        torch.testing.assert_close(grid[b].double(), expected, atol=1e-6, rtol=0)


def _blobs(batch: int, spatial: tuple[int, ...], channels: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(batch, channels, *spatial)), (0, 0, *(2,) * len(spatial)))
    return torch.from_numpy((smooth > 0.02).astype(np.float32))


@pytest.mark.parametrize("spatial", [(24, 20, 16), (40, 36)])
@pytest.mark.parametrize("subset", [True, False])
def test_masks_stay_aligned_with_images_and_binary(spatial, subset):
    """An image whose channels equal its mask: after augmentation the image (thresholded where the
    affine interpolated it) equals the mask, except on voxels next to the mask's boundary."""
    target = _blobs(8, spatial, 3, seed=1)
    aug = BatchAugmentation(intensity=False, spatial_prob=0.5, rotate_deg=25, scale=0.2)
    generator = torch.Generator().manual_seed(0)
    params = aug.draw(8, 3, len(spatial), generator)
    assert 0 < params["spatial"].sum() < 8 and params["flips"].any()
    image, out = aug.apply(target.clone(), target.clone(), params, subset=subset)
    assert set(torch.unique(out).tolist()) <= {0.0, 1.0}  # labels stay binary
    for b in range(8):
        if not params["spatial"][b]:  # flips only: exact
            assert torch.equal(image[b], out[b])
            expected = target[b]
            for axis in range(len(spatial)):
                expected = expected.flip(axis + 1) if params["flips"][b, axis] else expected
            assert torch.equal(out[b], expected)
            continue
        disagree = ((image[b] > 0.5) != out[b].bool()).numpy()
        edge = np.stack([ndimage.binary_dilation(m) & ~ndimage.binary_erosion(m) for m in out[b].bool().numpy()])
        assert not (disagree & ~edge).any() and disagree.sum() < 0.3 * edge.sum(), (disagree.sum(), edge.sum())
        assert out[b].sum() > 0.5 * target[b].sum()  # the mask moved, it did not vanish


def test_subset_and_whole_batch_resampling_agree():
    """CPU resamples only the drawn samples; a GPU resamples all and keeps those: the same result."""
    image, target = torch.randn(6, 2, 16, 18, 20), _blobs(6, (16, 18, 20), 3, seed=2)
    aug = BatchAugmentation(spatial_prob=0.5)
    params = aug.draw(6, 2, 3, torch.Generator().manual_seed(3))
    a = aug.apply(image, target, params, subset=True)
    b = aug.apply(image, target, params, subset=False)
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)
    assert torch.equal(a[1], b[1])


def test_intensity_scales_then_shifts_each_channel():
    aug = BatchAugmentation(flip=False, spatial_prob=0.0)
    image = torch.ones(4, 2, 5, 5)
    params = aug.draw(4, 2, 2, torch.Generator().manual_seed(11))
    out, _ = aug.apply(image, torch.zeros(4, 1, 5, 5), params)
    for b in range(4):
        for c in range(2):
            factor = float(params["factors"][b, c]) if params["do_scale"][b] else 1.0
            shift = float(params["shifts"][b, c]) if params["do_shift"][b] else 0.0
            torch.testing.assert_close(out[b, c], torch.full((5, 5), factor + shift))


def test_unknown_augment_device_is_an_error():
    with pytest.raises(ValueError, match="data.augment.device='gpu'"):
        Augmentation(device="gpu")


def test_datamodule_augments_training_batches_after_transfer(phantom_root, tmp_path):
    """data.augment.device=batch: the dataset's samples are plain, the hooks augment whole batches,
    with a seed from the batch's keys (the same batch gets the same augmentation)."""
    import hydra

    from tests.conftest import compose_config

    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.patch_size=[32,32,32]",
         "data.augment.device=batch", "data.augment.spatial_prob=1.0"],
        tmp_path, tmp_path / "cache",
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.batch_augment is not None
    batch = next(iter(datamodule.train_dataloader()))
    plain = datamodule.train_set.__class__(
        datamodule.train_set.cases, datamodule.regions, datamodule.patch_size, datamodule.batch_size,
        datamodule.oversample_foreground, None, datamodule.seed,
    )
    for i, key in enumerate(batch["key"].tolist()):
        assert torch.equal(batch["image"][i], plain[tuple(key)]["image"])  # not augmented in the dataset
    augmented = [
        datamodule.on_after_batch_transfer(datamodule.on_before_batch_transfer(dict(batch), 0), 0) for _ in range(2)
    ]
    assert "augment_seed" not in augmented[0]
    assert not torch.equal(augmented[0]["image"], batch["image"])
    assert torch.equal(augmented[0]["image"], augmented[1]["image"]) and torch.equal(augmented[0]["target"], augmented[1]["target"])
    assert set(torch.unique(augmented[0]["target"]).tolist()) <= {0.0, 1.0}
    val = {"image": torch.zeros(1, 4, 8, 8, 8), "target": torch.zeros(1, 3, 8, 8, 8), "case_id": ["x"]}
    assert datamodule.on_after_batch_transfer(datamodule.on_before_batch_transfer(val, 0), 0) is val


def test_the_batch_path_sends_label_maps_and_makes_the_same_targets_on_the_device(phantom_root, tmp_path):
    """data.augment.device=batch: the loader sends uint8 label maps (1 byte a voxel, not 3 float32 targets);
    the targets made after augmenting them on the device equal those of augmenting the float targets, as
    the batch path did before, for the same draws (elastic, rotation, flips all on)."""
    import hydra

    from lightning_brats.data.labels import labels_to_regions
    from tests.conftest import compose_config

    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.patch_size=[32,32,32]",
         "data.augment.device=batch", "data.augment.spatial_prob=1.0", "data.augment.elastic_prob=1.0"],
        tmp_path, tmp_path / "cache",
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert "target" not in batch and batch["label"].dtype == torch.uint8 and batch["label"].shape == (2, 1, 32, 32, 32)
    assert batch["image"].dtype == torch.float32 and batch["label"].max() > 0  # oversampled: some tumour
    # what the batch path did before: float targets from the loader, augmented as such
    targets = torch.from_numpy(labels_to_regions(batch["label"][:, 0].numpy(), datamodule.regions)).movedim(0, 1)
    seed = datamodule.batch_seed(batch["key"])
    before = datamodule.batch_augment(batch["image"], targets.contiguous(), torch.Generator().manual_seed(seed))
    after = datamodule.on_after_batch_transfer(datamodule.on_before_batch_transfer(dict(batch), 0), 0)
    assert "label" not in after and after["target"].dtype == torch.float32 and after["target"].is_contiguous()
    assert torch.equal(after["image"], before[0]) and torch.equal(after["target"], before[1])
    assert not torch.equal(after["target"], targets)  # it was augmented
    # the CPU path is untouched: float targets from the loader, as before
    cpu = hydra.utils.instantiate(compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.patch_size=[32,32,32]"],
        tmp_path, tmp_path / "cache").data)
    cpu.setup("fit")
    item = cpu.train_set[(0, 1)]
    assert "label" not in item and item["target"].dtype == torch.float32 and item["target"].shape == (3, 32, 32, 32)


@pytest.mark.parametrize("spatial", [(12, 10, 8), (14, 12)])
@pytest.mark.parametrize("subset", [True, False])
def test_augmenting_a_label_map_gives_the_targets_of_augmenting_the_targets(spatial, subset):
    """Nearest resampling and flips pick one source voxel for every channel, and zero padding is background,
    so a uint8 label map augmented and looked up equals its targets augmented (image untouched by the choice)."""
    from lightning_brats.data.batch_augment import label_regions, region_table
    from lightning_brats.data.labels import labels_to_regions

    regions = {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}
    rng = np.random.default_rng(5)
    label = rng.choice(np.array([0, 1, 2, 4], np.uint8), size=(6, 1, *spatial))
    targets = torch.from_numpy(labels_to_regions(label[:, 0], regions)).movedim(0, 1).contiguous()
    image = torch.randn(6, 4, *spatial)
    aug = BatchAugmentation(spatial_prob=0.5, rotate_deg=30, scale=0.3, elastic_prob=0.5)
    params = aug.draw(6, 4, len(spatial), torch.Generator().manual_seed(2))
    image_a, moved = aug.apply(image, torch.from_numpy(label), params, subset=subset, generator=torch.Generator().manual_seed(3))
    image_b, expected = aug.apply(image, targets, params, subset=subset, generator=torch.Generator().manual_seed(3))
    assert moved.dtype == torch.uint8 and torch.equal(image_a, image_b)
    table = region_table(labels_to_regions(np.arange(256, dtype=np.uint8), regions), "cpu")
    assert torch.equal(label_regions(moved, table), expected)
    assert not torch.equal(expected, targets)


def test_label_regions_equals_labels_to_regions_for_every_code():
    from lightning_brats.data.batch_augment import label_regions, region_table
    from lightning_brats.data.labels import labels_to_regions

    regions = {"wt": [1, 2, 3], "tc": [1, 3], "et": [3], "rc": [4]}
    label = np.random.default_rng(0).integers(0, 256, size=(3, 1, 9, 7, 5), dtype=np.uint8)
    out = label_regions(torch.from_numpy(label), region_table(labels_to_regions(np.arange(256, dtype=np.uint8), regions), "cpu"))
    assert out.shape == (3, 4, 9, 7, 5) and out.dtype == torch.float32 and out.is_contiguous()
    for b in range(3):
        np.testing.assert_array_equal(out[b].numpy(), labels_to_regions(label[b, 0], regions))


# -- no host syncs in the batch path ---------------------------------------------------------------------


def test_the_sync_counter_sees_every_kind_of_host_read():
    """So that a count of 0 below means something: each way of reading a value back is counted once."""
    from tests.sync_counter import count_host_syncs

    x = torch.rand(4, 5)
    mask = x > 0.5
    with count_host_syncs() as syncs:
        x[0, 0].item(), bool(mask[0, 0]), int(x[0, 0]), float(x[0, 0]), x.tolist(), x.cpu(), x.numpy()
        torch.nonzero(x), x.nonzero(), x[mask], torch.where(mask), torch.equal(x, x), torch.unique(x)
        [0, 1][torch.tensor(1)]
        if x[0, 0]:
            pass
        torch.nn.functional.interpolate(x[None, None], scale_factor=float(x[0, 0] + 1))  # float() inside a call
        y = x.clone()
        y[mask] = 0
    assert syncs.calls == [
        "Tensor.item", "Tensor.__bool__", "Tensor.__int__", "Tensor.__float__", "Tensor.tolist", "Tensor.cpu",
        "Tensor.numpy", "torch.nonzero", "Tensor.nonzero", "Tensor.__getitem__[bool mask]", "aten.nonzero",
        "torch.equal", "torch.unique", "Tensor.__index__", "Tensor.__bool__", "Tensor.__float__",
        "Tensor.__setitem__[bool mask]",
    ]
    with count_host_syncs() as syncs:
        torch.where(mask, x.flip(0), x) * 2, x[torch.tensor([0, 2])], x[:, 1:3], x.amax(dim=1), x.to(torch.float64)
    assert syncs.count == 0, syncs.calls


ALL_INTENSITY = ("noise_prob", "blur_prob", "brightness_prob", "contrast_prob", "inverted_gamma_prob", "gamma_prob")


@pytest.mark.parametrize("probability", [1.0, 0.5])
@pytest.mark.parametrize("patch", [[16, 16, 16], [24, 24]])
def test_the_batch_path_makes_no_host_sync(phantom_root, tmp_path, probability, patch):
    """``augment_batch`` (what ``on_after_batch_transfer`` runs on a GPU batch) with every augmentation on
    reads nothing back to the host. The batch is on the ``meta`` device: it takes the non-CPU branches (the
    CPU ones may read values back to skip work, which costs nothing there), and has no values, so any read
    back would also fail. Simulated low resolution is off: it syncs (below)."""
    import hydra

    from tests.conftest import compose_config
    from tests.sync_counter import count_host_syncs

    sampling = f"data.sampling={len(patch)}d"
    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", sampling, f"data.patch_size={patch}",
         "data.augment.device=batch", f"data.augment.spatial_prob={probability}",
         f"data.augment.elastic_prob={probability}", *[f"data.augment.{p}={probability}" for p in ALL_INTENSITY]],
        tmp_path, tmp_path / "cache",
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with count_host_syncs() as syncs:
        out = datamodule.augment_batch(meta, torch.Generator().manual_seed(0))
    assert syncs.count == 0, syncs.calls
    assert out["target"].shape == (2, 3, *patch) and out["image"].shape == (2, 4, *patch)
    # and on real CPU tensors the same code, told to resample the whole batch, reads back only where the
    # CPU intensity set skips what no sample drew (one any() per transform but brightness; on a GPU it computes)
    aug = datamodule.batch_augment
    params = aug.draw(2, 4, len(patch), torch.Generator().manual_seed(0))
    with count_host_syncs() as syncs:
        aug.apply(batch["image"], batch["label"], params, subset=False, generator=torch.Generator().manual_seed(1))
    assert syncs.calls == ["Tensor.__bool__"] * 5


def test_simulated_low_resolution_makes_no_host_sync():
    from tests.sync_counter import count_host_syncs

    aug = BatchAugmentation(low_res_prob=1.0)
    image, label = torch.empty(2, 4, 16, 16, 16, device="meta"), torch.empty(2, 1, 16, 16, 16, dtype=torch.uint8, device="meta")
    with count_host_syncs() as syncs:
        aug(image, label, torch.Generator())
    assert syncs.count == 0, syncs.calls


def test_loaders_keep_workers_and_pin_batches_for_a_gpu(phantom_root, tmp_path):
    import types

    import hydra

    from tests.conftest import compose_config

    cfg = compose_config(["data=sample", f"data.root={phantom_root}", "data.num_folds=4"], tmp_path, tmp_path / "cache")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.num_workers = 2
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        assert loader.persistent_workers and not loader.pin_memory  # no trainer: not training on a GPU
    gpu = types.SimpleNamespace(strategy=types.SimpleNamespace(root_device=torch.device("cuda", 0)), world_size=1)
    datamodule.trainer = gpu
    assert datamodule.train_dataloader().pin_memory and datamodule.val_dataloader().pin_memory
    datamodule.num_workers = 0
    assert not datamodule.train_dataloader().pin_memory and not datamodule.train_dataloader().persistent_workers


# -- elastic deformation ---------------------------------------------------------------------------------


def _reference_elastic(spatial, sigma, magnitude, rng):
    """batchgenerators' ``elastic_deform_coordinates_2`` for one axis, at full resolution: U(-1, 1) noise,
    ``scipy.ndimage.fourier_gaussian``, scaled so its largest absolute value is ``magnitude``."""
    field = np.fft.ifftn(ndimage.fourier_gaussian(np.fft.fftn(rng.uniform(-1, 1, spatial)), sigma)).real
    return field / np.abs(field).max() * magnitude


@pytest.mark.parametrize("spatial,scale", [((48, 48, 48), 0.2), ((48, 40, 56), 0.12), ((96, 96), 0.1)])
def test_elastic_displacement_has_the_statistics_of_the_full_resolution_field(spatial, scale):
    """Against the full-resolution definition: each axis's largest offset is exactly its magnitude, and
    the field's SD (relative to that largest offset) and its correlation 4 voxels apart match."""
    draws, d = 16, len(spatial)
    magnitude = torch.tensor([[2.0 + a for a in range(d)]]).expand(draws, d)
    field = elastic_displacement(torch.full((draws,), scale), magnitude, spatial, torch.Generator().manual_seed(0))
    assert field.shape == (draws, *spatial, d)
    peak = field.abs().amax(dim=tuple(range(1, 1 + d)))
    torch.testing.assert_close(peak, magnitude, atol=1e-5, rtol=0)
    rng = np.random.default_rng(0)
    sigma = [scale * n for n in spatial]
    reference = np.stack([_reference_elastic(spatial, sigma, 2.0, rng) for _ in range(draws)])

    def stats(x: np.ndarray) -> tuple[float, float]:
        a, b = x[..., :-4], x[..., 4:]  # 4 voxels apart along the last axis
        return float(x.std() / np.abs(x).max(axis=tuple(range(1, 1 + d))).mean()), float(
            np.mean(a * b) / np.sqrt(np.mean(a * a) * np.mean(b * b)))

    (sd, corr), (ref_sd, ref_corr) = stats(field[..., 0].numpy()), stats(reference)
    assert 0.8 < sd / ref_sd < 1.25, (sd, ref_sd)
    assert abs(corr - ref_corr) < 0.06 and 0.5 < ref_corr < 1.0, (corr, ref_corr)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_displacement_to_grid_moves_the_sample_along_its_own_axis(axis):
    """An offset of +2 voxels along one axis of a non-cubic patch samples the input 2 voxels further along it."""
    spatial = (10, 12, 14)
    x = torch.randn(1, 2, *spatial)
    offsets = torch.zeros(1, *spatial, 3)
    offsets[..., axis] = 2.0
    grid = affine_grid(torch.eye(3)[None], spatial) + displacement_to_grid(offsets)
    out = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    n = spatial[axis]
    torch.testing.assert_close(out.narrow(axis + 2, 0, n - 2), x.narrow(axis + 2, 2, n - 2), atol=1e-5, rtol=0)
    assert torch.count_nonzero(out.narrow(axis + 2, n - 2, 2)) == 0  # zero padding beyond the patch


def test_elastic_offsets_apply_before_the_affine():
    """As batchgenerators does (offsets added to the coordinates, then rotated and scaled): a voxel at
    centred position p samples the input at M (p + offset(p)), worked out here voxel by voxel in float64."""
    spatial = (9, 10, 11)
    gen = torch.Generator().manual_seed(4)
    matrices = rotation_matrices(torch.rand(2, 3, generator=gen) - 0.5) * (0.8 + 0.4 * torch.rand(2, 1, 3, generator=gen))
    offsets = torch.randn(2, *spatial, 3, generator=gen)
    grid = affine_grid(matrices, spatial) + elastic_grid_offsets(offsets, matrices)
    n = torch.tensor(spatial, dtype=torch.float64)
    index = torch.stack(torch.meshgrid(*[torch.arange(k, dtype=torch.float64) for k in spatial], indexing="ij"), -1)
    for b in range(2):
        source = (index - (n - 1) / 2 + offsets[b].double()) @ matrices[b].double().T + (n - 1) / 2
        expected = ((2 * source + 1) / n - 1).flip(-1)
        torch.testing.assert_close(grid[b].double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_both_paths_draw_the_same_elastic_distributions(dims):
    settings = {"spatial_prob": 0.3, "elastic_prob": 0.3, "elastic_scale": [0, 0.25]}
    cpu = [Augmentation(**settings).draw(np.random.default_rng((6, i)), 4, dims) for i in range(N)]
    batch = {k: v.numpy() for k, v in BatchAugmentation(**settings).draw(N, 4, dims, torch.Generator().manual_seed(6)).items()}
    sigma = 4 * math.sqrt(0.3 * 0.7 / N)
    assert abs(np.mean([c["elastic"] for c in cpu]) - 0.3) < sigma and abs(batch["elastic"].mean() - 0.3) < sigma
    for name, (low, high) in (("elastic_scale", (0, 0.25)), ("elastic_magnitude", (1 / 8, 1 / 2))):
        a = np.concatenate([np.ravel(c[name]) for c in cpu if c["elastic"]])
        b = batch[name][batch["elastic"]].ravel()
        assert low <= a.min() and a.max() <= high and low <= b.min() and b.max() <= high, name
        assert _ks_distance(a, b) < _ks_critical(len(a), len(b)), name
        assert abs(np.mean(a > (low + high) / 2) - 0.5) < 0.05, name  # uniform
    assert len(np.concatenate([c["elastic_magnitude"] for c in cpu if c["elastic"]])) == dims * sum(c["elastic"] for c in cpu)


@pytest.mark.parametrize("dims", [2, 3])
def test_turning_the_elastic_deformation_on_leaves_the_other_draws_alone(dims):
    """The elastic parameters are drawn after all others, on both paths: the rest of a sample's (or a
    batch's) draws are the same with it on as with it off, so presets without it train as recorded."""
    on, off = Augmentation(elastic_prob=0.3), Augmentation()
    for i in range(50):
        a, b = on.draw(np.random.default_rng(i), 4, dims), off.draw(np.random.default_rng(i), 4, dims)
        assert b.keys() <= a.keys()
        for key in b:
            assert (a[key] is None and b[key] is None) or np.array_equal(a[key], b[key]), key
    on, off = BatchAugmentation(elastic_prob=0.3), BatchAugmentation()
    a = on.draw(64, 4, dims, torch.Generator().manual_seed(1))
    b = off.draw(64, 4, dims, torch.Generator().manual_seed(1))
    assert set(a) - set(b) == {"elastic", "elastic_scale", "elastic_magnitude"}
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("spatial", [(32, 28, 24), (64, 56)])
@pytest.mark.parametrize("subset", [True, False])
def test_elastic_masks_stay_aligned_with_images_and_binary(spatial, subset):
    """Deformed images (thresholded) equal their deformed masks but next to the boundary; the masks
    stay binary and move without vanishing."""
    target = _blobs(4, spatial, 3, seed=4)
    aug = BatchAugmentation(flip=False, intensity=False, spatial_prob=0.0, elastic_prob=1.0, elastic_scale=(0.1, 0.15))
    generator = torch.Generator().manual_seed(0)
    params = aug.draw(4, 3, len(spatial), generator)
    image, out = aug.apply(target.clone(), target.clone(), params, subset=subset, generator=generator)
    assert set(torch.unique(out).tolist()) <= {0.0, 1.0}
    for b in range(4):
        changed = (out[b] != target[b]).float().mean()
        assert 0.002 < changed < 0.35, changed
        disagree = ((image[b] > 0.5) != out[b].bool()).numpy()
        # next to the mask's boundary, but for a few voxels of one-voxel-thin parts of the blobs (where the
        # thresholded (tri)linear value and the nearest neighbour can differ wherever they land): masks
        # deformed apart from their images would disagree on whole bands
        edge = np.stack([ndimage.binary_dilation(m) & ~ndimage.binary_erosion(m) for m in out[b].bool().numpy()])
        assert (disagree & ~edge).sum() <= 1e-3 * disagree.size and disagree.sum() < 0.3 * edge.sum()
        assert out[b].sum() > 0.5 * target[b].sum()


def test_cpu_path_applies_the_elastic_deformation_of_its_draw():
    """The per-sample path deforms with the parameters it drew: the largest offset per axis is the drawn
    fraction of sigma_a = scale * n_a, seen in the image as sampling positions (image = its own coordinate)."""
    spatial = (24, 20, 16)
    aug = Augmentation(flip=False, intensity=False, spatial_prob=0.0, elastic_prob=1.0, elastic_scale=(0.2, 0.25))
    # channel a holds the voxel's coordinate along axis a: trilinear resampling returns where each voxel sampled
    coords = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in spatial], indexing="ij"))
    target = np.zeros((1, *spatial), np.float32)
    out, _ = aug(coords, target, np.random.default_rng(7))
    params = aug.draw(np.random.default_rng(7), 3, 3)
    inner = tuple(slice(4, n - 4) for n in spatial)  # away from the zero padding
    moved = (out - coords)[(slice(None), *inner)]
    for a, n in enumerate(spatial):
        largest = params["elastic_magnitude"][a] * params["elastic_scale"] * n
        assert 0.5 * largest < np.abs(moved[a]).max() <= largest + 1e-4, (a, np.abs(moved[a]).max(), largest)


@pytest.mark.parametrize("bad", [{"elastic_prob": 1.5}, {"elastic_scale": [0.3, 0.2]}, {"elastic_scale": [-0.1, 0.2]},
                                 {"elastic_scale": 0.2}])
def test_bad_elastic_settings_are_errors(bad):
    with pytest.raises(ValueError, match="elastic"):
        Augmentation(**bad)
    with pytest.raises(ValueError, match="elastic"):
        BatchAugmentation(**bad)


@pytest.mark.parametrize("spatial", [(20, 17, 13), (33, 28)])
def test_batched_low_resolution_equals_the_per_channel_one(spatial):
    from lightning_brats.data.intensity_augment import simulate_low_resolution, simulate_low_resolution_batch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *spatial, generator=generator)
    scale = 0.5 + 0.5 * torch.rand(2, 3, generator=generator)
    got = simulate_low_resolution_batch(x, scale)
    for b in range(2):
        for c in range(3):
            expected = simulate_low_resolution(x[b, c], float(scale[b, c]))
            assert torch.allclose(got[b, c], expected, atol=1e-5), (b, c)
