"""data.cache_dtype: a float16 preprocessing cache reads back within float16 precision of the float32 one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_brats.data.datamodule import WholeCaseDataset
from lightning_brats.data.preprocess import PreprocessedCache
from lightning_brats.data.sampling import TrainingSampleDataset
from lightning_brats.data.settings import PreprocessingSettings
from tests.conftest import BRATS20_LABELS, BRATS20_LAYOUT, BRATS20_REGIONS, BRATS_MODALITIES

SETTINGS = PreprocessingSettings(tuple(BRATS_MODALITIES))


@pytest.mark.slow  # two caches of a real case built: over a second of the quick loop
@pytest.mark.real_data
def test_float16_cache_is_half_the_size_and_within_float16_precision(brats2018_root, tmp_path):
    cases = BRATS20_LAYOUT.find_cases(brats2018_root)[:1]
    caches = {d: PreprocessedCache(tmp_path, "x", SETTINGS, BRATS20_LABELS, dtype=d) for d in ("float32", "float16")}
    for cache in caches.values():
        cache.ensure(cases)
    assert caches["float32"].path != caches["float16"].path  # the dtype is part of the fingerprint
    case_id = cases[0].case_id
    full, half = caches["float32"].load(case_id), caches["float16"].load(case_id)
    assert isinstance(half.image, np.memmap) and half.image.dtype == np.float16 and full.image.dtype == np.float32
    size = {d: (c.path / f"{case_id}_image.npy").stat().st_size for d, c in caches.items()}
    assert abs(size["float16"] / size["float32"] - 0.5) < 0.01
    # float16 keeps 11 significant bits: rounding moves a value by at most 2^-11 of it (2^-25 absolute
    # for the subnormals below 2^-14); z-scored intensities stay far below float16's maximum 65504
    error = np.abs(half.image.astype(np.float64) - full.image.astype(np.float64))
    assert (error <= np.abs(full.image) * 2.0**-11 + 2.0**-25).all()
    assert np.array_equal(half.label, full.label)
    # what training and validation read from it is float32
    sample = TrainingSampleDataset([half], BRATS20_REGIONS, (32, 32, 32), 2, 1.0, None, seed=0)[(0, 1)]
    assert sample["image"].dtype == torch.float32
    assert WholeCaseDataset([half], BRATS20_REGIONS)[0]["image"].dtype == torch.float32


def test_unknown_cache_dtype_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="data.cache_dtype='bfloat16'"):
        PreprocessedCache(tmp_path, "x", SETTINGS, BRATS20_LABELS, dtype="bfloat16")


def test_float32_keeps_the_fingerprint_of_caches_written_before_the_option(tmp_path):
    """Caches written before data.cache_dtype existed were float32 and stay valid."""
    import hashlib
    import json

    cache = PreprocessedCache(tmp_path, "x", SETTINGS, BRATS20_LABELS)
    settings = {"version": 1, "modalities": list(BRATS_MODALITIES), "labels": BRATS20_LABELS, "spacing": None,
                "normalization": "zscore", "crop": "nonzero", "crop_size": None}
    expected = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert cache.fingerprint == expected
    assert PreprocessedCache(tmp_path, "x", SETTINGS, BRATS20_LABELS, dtype="float16").fingerprint != expected


def test_data_cache_dtype_reaches_the_cache(tmp_path):
    import hydra

    from tests.conftest import compose_config

    caches = [
        hydra.utils.instantiate(compose_config(["data=brats20", "data.root=/x", *extra], tmp_path).data).cache
        for extra in ([], ["data.cache_dtype=float16"])
    ]
    assert [c.dtype for c in caches] == ["float32", "float16"] and caches[0].path != caches[1].path
