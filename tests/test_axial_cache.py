"""The cache's slice-major copies (issue 12, input-pipeline speed): 2D samples cut from it are the
voxels of the cached image, the same for a fixed seed as from the image itself, read from np.memmap;
older caches without the copy stay readable and get it added without being preprocessed again."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_brats.data import sampling
from lightning_brats.data.preprocess import PreprocessedCache
from lightning_brats.data.settings import PreprocessingSettings
from tests.conftest import BRATS20_LABELS, BRATS20_LAYOUT, BRATS20_REGIONS, BRATS_MODALITIES

PATCH = (56, 72)  # the phantoms' cropped slices are smaller than 72 in y: every slice is padded there


def _cache(root, folder, axial: bool, count: int = 3):
    files = BRATS20_LAYOUT.find_cases(root)[:count]
    cache = PreprocessedCache(folder, "x", PreprocessingSettings(tuple(BRATS_MODALITIES)), BRATS20_LABELS, axial_copy=axial)
    cache.ensure(files, log=lambda *_: None)
    return cache, files


def _window(volume: np.ndarray, start, size) -> np.ndarray:
    """``volume[:, start:start+size]`` over the two trailing axes, zeros outside (worked out with np.pad)."""
    pad = max(size) + max(abs(s) for s in start)
    padded = np.pad(volume, [(0, 0), (pad, pad), (pad, pad)])
    return padded[:, start[0] + pad:start[0] + pad + size[0], start[1] + pad:start[1] + pad + size[1]]


def test_axial_slices_are_the_cached_voxels_for_a_fixed_seed(phantom_root, tmp_path):
    cache, files = _cache(phantom_root, tmp_path, axial=True)
    cases = [cache.load(f.case_id) for f in files]
    raw = {f.case_id: np.load(cache.path / f"{f.case_id}_image.npy") for f in files}  # whole arrays, not the code under test
    labels = {f.case_id: np.load(cache.path / f"{f.case_id}_label.npy") for f in files}
    assert all(isinstance(c.axial, np.memmap) and c.axial.shape == (c.image.shape[3], *c.image.shape[:3]) for c in cases)
    assert all(isinstance(c.axial_label, np.memmap) and c.axial_label.shape == (c.label.shape[2], *c.label.shape[:2]) for c in cases)
    # no oversampling: every draw is (case, slice, start) from the key's generator, redone here by hand
    dataset = sampling.TrainingSampleDataset(cases, BRATS20_REGIONS, PATCH, 4, oversample_foreground=0.0, seed=7)
    checked = 0
    for index in range(12):
        rng = np.random.default_rng((7, 3, index))
        case = cases[int(rng.integers(len(cases)))]
        z = int(rng.integers(case.image.shape[3]))
        start = [int(rng.integers(min(0, n - s), max(0, n - s) + 1)) for n, s in zip(case.image.shape[1:3], PATCH)]
        item = dataset[(3, index)]
        expected = _window(raw[case.case_id][..., z], start, PATCH)
        label = _window(labels[case.case_id][None, ..., z], start, PATCH)[0]
        wt, tc, et = (label == 1) | (label == 2) | (label == 4), (label == 1) | (label == 4), label == 4
        assert item["case_id"] == case.case_id
        np.testing.assert_array_equal(item["image"].numpy(), expected)
        assert item["target"].dtype == torch.float32
        np.testing.assert_array_equal(item["target"].numpy(), np.stack([wt, tc, et]).astype(np.float32))
        checked += bool(wt.any())
    assert checked  # some of the checked slices hold tumour


def test_augmented_samples_are_unchanged_by_the_axial_copy(phantom_root, tmp_path):
    """Same seed, same keys: samples (oversampled, augmented, resampled ones included) equal those cut
    from the (C, x, y, z) image as before the copy existed."""
    cache, files = _cache(phantom_root, tmp_path, axial=True)
    with_copy = [cache.load(f.case_id) for f in files]
    without = [sampling.CachedCase(c.case_id, c.image, c.label, c.record) for c in with_copy]
    augment = sampling.Augmentation(spatial_prob=0.5)
    a = sampling.TrainingSampleDataset(with_copy, BRATS20_REGIONS, PATCH, 4, augment=augment, seed=1)
    b = sampling.TrainingSampleDataset(without, BRATS20_REGIONS, PATCH, 4, augment=augment, seed=1)
    for key in [(0, i) for i in range(8)] + [(5, i) for i in range(8)]:
        x, y = a[key], b[key]
        assert x["case_id"] == y["case_id"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["target"], y["target"])


def test_2d_items_read_the_axial_copy_from_np_memmap(phantom_root, tmp_path, monkeypatch):
    cache, files = _cache(phantom_root, tmp_path, axial=True, count=2)
    cases = [cache.load(f.case_id) for f in files]
    dataset = sampling.TrainingSampleDataset(cases, BRATS20_REGIONS, PATCH, 2, augment=sampling.Augmentation())
    read_from = []
    original = sampling.crop_or_pad
    monkeypatch.setattr(sampling, "crop_or_pad", lambda array, *a: read_from.append(array) or original(array, *a))
    for i in range(4):
        dataset[(0, i)]
    assert len(read_from) == 8 and all(type(r) is np.memmap for r in read_from)
    # one contiguous block per slice: (C, x, y) of the image, (1, x, y) of the label
    assert all(r.flags["C_CONTIGUOUS"] and r.ndim == 3 for r in read_from)
    assert [r.shape[0] for r in read_from] == [4, 1] * 4


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_an_old_cache_gets_the_copy_without_being_preprocessed_again(phantom_root, tmp_path, dtype):
    files = BRATS20_LAYOUT.find_cases(phantom_root)[:2]
    settings = PreprocessingSettings(tuple(BRATS_MODALITIES))
    old = PreprocessedCache(tmp_path, "x", settings, BRATS20_LABELS, dtype=dtype)
    old.ensure(files, log=lambda *_: None)
    assert old.load(files[0].case_id).axial is None is old.load(files[0].case_id).axial_label  # read as before
    image_file = old.path / f"{files[0].case_id}_image.npy"
    written = image_file.stat().st_mtime_ns
    messages = []
    new = PreprocessedCache(tmp_path, "x", settings, BRATS20_LABELS, dtype=dtype, axial_copy=True)
    assert new.path == old.path  # a storage option: same fingerprint, same folder
    new.ensure(files, log=messages.append)
    assert image_file.stat().st_mtime_ns == written  # not preprocessed again
    assert any("slice-major copy to 2 cached cases" in m for m in messages)
    for f in files:
        case = new.load(f.case_id)
        image = np.load(new.path / f"{f.case_id}_image.npy")
        label = np.load(new.path / f"{f.case_id}_label.npy")
        assert case.axial.dtype == np.dtype(dtype) and case.axial_label.dtype == label.dtype
        for z in (0, image.shape[3] // 2, image.shape[3] - 1):
            np.testing.assert_array_equal(case.axial[z], image[..., z])
            np.testing.assert_array_equal(case.axial_label[z], label[..., z])
    # a damaged copy is found and rewritten
    axial_file = new.path / f"{files[1].case_id}_label_axial.npy"
    axial_file.write_bytes(axial_file.read_bytes()[:-100])
    new.ensure(files, log=messages.append)
    np.testing.assert_array_equal(new.load(files[1].case_id).axial_label[3], np.load(new.path / f"{files[1].case_id}_label.npy")[..., 3])


def test_a_new_cache_with_the_copy_writes_it_with_the_case(phantom_root, tmp_path):
    cache, files = _cache(phantom_root, tmp_path, axial=True, count=1)
    record = (cache.path / f"{files[0].case_id}.json").read_text()
    assert "image_axial" in record and "label_axial" in record
    assert cache._axial_problem(files[0].case_id) is None


def test_3d_targets_are_the_regions_of_the_cached_labels(phantom_root, tmp_path):
    """The uint8 lookup gives each region's mask, worked out here with comparisons on the cached label
    (and a label of another dtype, the general path, the same)."""
    cache, files = _cache(phantom_root, tmp_path, axial=False, count=2)
    cases = [cache.load(f.case_id) for f in files]
    labels = {f.case_id: np.load(cache.path / f"{f.case_id}_label.npy") for f in files}
    wider = [sampling.CachedCase(c.case_id, c.image, np.asarray(c.label, dtype=np.int32), c.record) for c in cases]
    size = (24, 24, 24)
    for dataset_cases in (cases, wider):
        dataset = sampling.TrainingSampleDataset(dataset_cases, BRATS20_REGIONS, size, 2, oversample_foreground=0.0, seed=3)
        tumour = 0
        for index in range(8):
            rng = np.random.default_rng((3, 0, index))  # the draws: case, then a uniform start per axis
            case = cases[int(rng.integers(len(cases)))]
            start = [int(rng.integers(0, n - s + 1)) for n, s in zip(case.label.shape, size)]
            label = labels[case.case_id][tuple(slice(a, a + s) for a, s in zip(start, size))]
            expected = np.stack([(label == 1) | (label == 2) | (label == 4), (label == 1) | (label == 4), label == 4])
            item = dataset[(0, index)]
            assert item["case_id"] == case.case_id and item["target"].dtype == torch.float32
            np.testing.assert_array_equal(item["target"].numpy(), expected.astype(np.float32))
            tumour += bool(expected[0].any())
        assert tumour  # some windows hold tumour


@pytest.mark.parametrize("size", [(24, 24, 24), PATCH])
def test_augmenting_the_label_map_gives_the_targets_of_augmenting_the_targets(phantom_root, tmp_path, size):
    """uint8 labels: the CPU augmentation moves the one-channel label map and the regions are taken after;
    other label types take the regions first and move the R target channels. Same keys, same draws
    (resampling on every sample, flips): the same images and targets."""
    cache, files = _cache(phantom_root, tmp_path, axial=len(size) == 2, count=2)
    cases = [cache.load(f.case_id) for f in files]
    wider = [sampling.CachedCase(c.case_id, c.image, np.asarray(c.label, dtype=np.int32), c.record) for c in cases]
    assert cases[0].label.dtype == np.uint8
    augment = sampling.Augmentation(spatial_prob=1.0, rotate_deg=25.0, scale=0.2)
    a = sampling.TrainingSampleDataset(cases, BRATS20_REGIONS, size, 2, augment=augment, seed=4)
    b = sampling.TrainingSampleDataset(wider, BRATS20_REGIONS, size, 2, augment=augment, seed=4)
    tumour = 0
    for key in [(0, i) for i in range(6)]:
        x, y = a[key], b[key]
        assert torch.equal(x["image"], y["image"])
        assert torch.equal(x["target"], y["target"])
        tumour += int(x["target"][0].sum() > 0)
    assert tumour  # resampled windows that hold tumour were compared
