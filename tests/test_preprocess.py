"""Preprocessing on real cases: crop, z-score, resampling, the cache, and the way back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_brats.data.preprocess import (
    PreprocessedCache,
    nonzero_bbox,
    preprocess_case,
    restore_to_original,
)
from lightning_brats.data.readers import DataError, load_case
from lightning_brats.data.settings import PreprocessingSettings
from tests.conftest import BRATS20_LABELS, BRATS20_LAYOUT, BRATS_MODALITIES, copy_case

pytestmark = pytest.mark.real_data


def _settings(**options) -> PreprocessingSettings:
    return PreprocessingSettings(BRATS_MODALITIES, **options)


@pytest.fixture(scope="module")
def real_case(brats2018_root):
    return load_case(BRATS20_LAYOUT.find_cases(brats2018_root)[0], BRATS_MODALITIES, BRATS20_LABELS)


def test_crop_and_zscore(real_case):
    image, label, record = preprocess_case(real_case, _settings())
    box = np.asarray(record["crop_box"])
    assert image.shape[1:] == label.shape == tuple(box[:, 1] - box[:, 0])
    assert image.shape[1:] < real_case.image.shape[1:]
    brain = np.any(image != 0, axis=0)
    for channel in image:
        assert abs(channel[brain].mean()) < 1e-3 and abs(channel[brain].std() - 1) < 1e-3


def test_round_trip_puts_crop_back_voxel_for_voxel(real_case):
    _, label, record = preprocess_case(real_case, _settings())
    restored = restore_to_original(label, record)
    assert restored.shape == real_case.label.shape
    np.testing.assert_array_equal(restored, real_case.label)
    np.testing.assert_array_equal(np.asarray(record["affine"]), real_case.affine)


def test_resampled_round_trip_keeps_the_tumour(real_case):
    _, label, record = preprocess_case(real_case, _settings(spacing=[2.0, 2.0, 2.0]))
    assert record["preprocessed_spacing"] == [2.0, 2.0, 2.0]
    assert all(abs(n - c / 2) <= 0.5 for n, c in zip(label.shape, record["cropped_shape"]))
    restored = restore_to_original(label, record)
    assert restored.shape == real_case.label.shape
    wt, wt_back = real_case.label > 0, restored > 0
    assert 2 * (wt & wt_back).sum() / (wt.sum() + wt_back.sum()) > 0.9
    assert set(np.unique(restored)) <= {0, 1, 2, 4}


def test_cache_is_reused_and_redoes_only_missing_cases(brats2018_root, tmp_path):
    root = tmp_path / "root"
    for name in ("Brats18_2013_11_1", "Brats18_CBICA_ABM_1"):
        copy_case(brats2018_root / name, root)
    cases = BRATS20_LAYOUT.find_cases(root)
    cache = PreprocessedCache(tmp_path / "cache", "x", _settings(spacing=[2, 2, 2]), BRATS20_LABELS)
    cache.ensure(cases)
    first = {p.name: p.stat().st_mtime_ns for p in cache.path.iterdir()}
    (cache.path / "Brats18_CBICA_ABM_1.json").unlink()  # as if interrupted before the record
    cache.ensure(cases)
    second = {p.name: p.stat().st_mtime_ns for p in cache.path.iterdir()}
    assert second["Brats18_2013_11_1_image.npy"] == first["Brats18_2013_11_1_image.npy"]
    assert second["Brats18_CBICA_ABM_1_image.npy"] != first["Brats18_CBICA_ABM_1_image.npy"]
    assert not [p for p in cache.path.iterdir() if ".tmp-" in p.name]
    loaded = cache.load("Brats18_2013_11_1")
    assert isinstance(loaded.image, np.memmap) and loaded.image.shape[0] == 4
    assert json.loads((cache.path / "Brats18_2013_11_1.json").read_text())["original_shape"] == [240, 240, 155]
    # the same root given relative to the working directory is the same source: nothing redone
    import os

    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        relative = BRATS20_LAYOUT.find_cases("root")
        assert str(relative[0].images["flair"]).startswith("root")
        assert all(cache.is_cached(c) for c in relative)
    finally:
        os.chdir(cwd)
    # a different setting is a different cache folder
    assert PreprocessedCache(tmp_path / "cache", "x", _settings(spacing=[1, 1, 1]), BRATS20_LABELS).path != cache.path


def test_failing_case_leaves_cached_cases_intact(brats2018_root, tmp_path):
    root = tmp_path / "root"
    copy_case(brats2018_root / "Brats18_2013_11_1", root)
    cache = PreprocessedCache(tmp_path / "cache", "x", _settings(spacing=[2, 2, 2]), BRATS20_LABELS)
    cache.ensure(BRATS20_LAYOUT.find_cases(root))
    before = {p.name: p.read_bytes() for p in cache.path.iterdir()}
    bad = copy_case(brats2018_root / "Brats18_2013_20_1", root) / "Brats18_2013_20_1_t1.nii.gz"
    data = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(data[:1000])
    with pytest.raises(DataError, match="Brats18_2013_20_1_t1.nii.gz: cannot read NIfTI"):
        cache.ensure(BRATS20_LAYOUT.find_cases(root))
    assert {p.name: p.read_bytes() for p in cache.path.iterdir()} == before


@pytest.mark.slow
def test_parallel_preprocessing_equals_serial_and_names_a_bad_file(brats2018_root, tmp_path):
    root = tmp_path / "root"
    for name in ("Brats18_2013_11_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA02_135_1"):
        copy_case(brats2018_root / name, root)
    cases = BRATS20_LAYOUT.find_cases(root)
    serial = PreprocessedCache(tmp_path / "serial", "x", _settings(spacing=[2, 2, 2]), BRATS20_LABELS)
    serial.ensure(cases, workers=1)
    parallel = PreprocessedCache(tmp_path / "parallel", "x", _settings(spacing=[2, 2, 2]), BRATS20_LABELS)
    parallel.ensure(cases, workers=2)
    for case in cases:
        a, b = serial.load(case.case_id), parallel.load(case.case_id)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    bad = copy_case(brats2018_root / "Brats18_2013_20_1", root) / "Brats18_2013_20_1_seg.nii.gz"
    data = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(data[:500])
    with pytest.raises(DataError, match="Brats18_2013_20_1_seg.nii.gz: cannot read NIfTI"):
        parallel.ensure(BRATS20_LAYOUT.find_cases(root), workers=2)
    assert all(parallel.is_cached(c) for c in cases)


def test_minmax_normalization_scales_brain_to_unit_range(real_case):
    image, _, _ = preprocess_case(real_case, _settings(normalization="minmax"))
    brain = np.any(real_case.image != 0, axis=0)[tuple(slice(a, b) for a, b in nonzero_bbox(real_case.image))]
    for channel in image:
        assert channel[brain].min() == pytest.approx(0.0) and channel[brain].max() == pytest.approx(1.0)
        assert not channel[~brain].any()


def test_center_crop_has_the_size_and_goes_back_in_place(real_case):
    image, label, record = preprocess_case(real_case, _settings(crop="center", crop_size=[128, 128, 128]))
    assert image.shape == (4, 128, 128, 128) and record["crop_box"] == [[56, 184], [56, 184], [13, 141]]
    restored = restore_to_original(label, record)
    inside = tuple(slice(a, b) for a, b in record["crop_box"])
    np.testing.assert_array_equal(restored[inside], real_case.label[inside])
    assert not restored.sum() - restored[inside].sum()


def test_case_with_other_channels_than_the_settings_is_refused(real_case):
    with pytest.raises(ValueError, match=r"4 channels, the preprocessing expects data.modalities=\['flair'\]"):
        preprocess_case(real_case, PreprocessingSettings(["flair"]))


def test_preprocessing_options_key_the_cache(tmp_path):
    import hydra

    from tests.conftest import compose_config

    paths = set()
    for options in ([], ["data.normalization=minmax"], ["data.crop=center", "data.crop_size=[128,128,128]"]):
        cfg = compose_config(["data=brats20", "data.root=/x", *options], tmp_path)
        paths.add(hydra.utils.instantiate(cfg.data).cache.path)
    assert len(paths) == 3
