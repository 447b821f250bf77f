"""Sampling: patch and slice shapes, foreground oversampling, the case-level split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_brats.data.sampling import (
    FOREGROUND_SAMPLING,
    Augmentation,
    TrainingSampleDataset,
    crop_or_pad,
    foreground_classes,
    patch_start,
)
from lightning_brats.data.splits import kfold_split


def test_kfold_split_is_reproducible_disjoint_and_complete():
    ids = [f"case_{i:02d}" for i in range(23)]
    folds = [kfold_split(ids, 5, k, seed=7) for k in range(5)]
    assert folds == [kfold_split(list(reversed(ids)), 5, k, seed=7) for k in range(5)]
    vals = [set(v) for _, v in folds]
    assert set().union(*vals) == set(ids) and sum(map(len, vals)) == len(ids)
    for train, val in folds:
        assert not set(train) & set(val) and len(train) + len(val) == len(ids)
    assert kfold_split(ids, 5, 0, seed=8) != folds[0]
    with pytest.raises(ValueError, match="data.fold=5 is outside"):
        kfold_split(ids, 5, 5, seed=7)


def test_crop_or_pad_pads_outside_the_volume():
    array = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4) + 1
    out = crop_or_pad(array, [-2, 1, 2], [4, 4, 4])
    assert out.shape == (2, 4, 4, 4)
    np.testing.assert_array_equal(out[:, 2:, :3, :2], array[:, :2, 1:, 2:])
    assert not out[:, :2].any() and not out[:, :, 3].any()


def test_centred_patch_contains_its_centre():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = rng.integers(20, 60, 3)
        centre = [int(rng.integers(n)) for n in shape]
        start = patch_start(shape, [32, 32, 32], rng, centre)
        assert all(s <= c < s + 32 for s, c in zip(start, centre))


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("patch_size", [(32, 32, 32), (32, 32)])
def test_foreground_fraction_of_batches_matches_setting(real_datamodule, patch_size):
    batch_size, fraction = 3, 0.33  # nnU-Net's rule: round(3 * 0.67) = 2 random, 1 on tumour
    dataset = TrainingSampleDataset(
        real_datamodule.train_set.cases, real_datamodule.regions, patch_size, batch_size, fraction, Augmentation(), seed=1
    )
    samples = [dataset[(0, i)] for i in range(60)]
    assert all(s["image"].shape == (4, *patch_size) and s["target"].shape == (3, *patch_size) for s in samples)
    has_tumour = np.array([bool(s["target"][0].any()) for s in samples])
    forced = np.array([dataset.is_oversampled(i) for i in range(60)])
    assert forced.mean() == pytest.approx(1 / 3)
    assert has_tumour[forced].all()  # every oversampled patch holds tumour
    # small patches placed at random miss the tumour often (the reason to oversample)
    assert has_tumour[~forced].mean() < 0.9
    assert has_tumour.mean() >= fraction
    # regions nest: ET inside TC inside WT
    for s in samples:
        wt, tc, et = s["target"].bool()
        assert not (tc & ~wt).any() and not (et & ~tc).any()


@pytest.mark.slow
@pytest.mark.real_data
def test_epochs_are_reproducible_and_differ(real_datamodule):
    dataset = real_datamodule.train_set
    a, b = dataset[(0, 3)], dataset[(0, 3)]
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], dataset[(1, 3)]["image"])


@pytest.mark.slow
@pytest.mark.real_data
def test_split_is_by_case(real_datamodule):
    assert len(real_datamodule.train_ids) == 16 and len(real_datamodule.val_ids) == 4
    assert not set(real_datamodule.train_ids) & set(real_datamodule.val_ids)
    assert {c.case_id for c in real_datamodule.train_set.cases} == set(real_datamodule.train_ids)


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("patch_size", [(48, 48, 48), (64, 64)])
def test_spatial_augmentation_keeps_binary_nested_targets(real_datamodule, patch_size):
    always = Augmentation(spatial_prob=1.0)
    dataset = TrainingSampleDataset(real_datamodule.train_set.cases, real_datamodule.regions, patch_size, 2, 1.0, always, seed=3)
    plain = TrainingSampleDataset(real_datamodule.train_set.cases, real_datamodule.regions, patch_size, 2, 1.0, None, seed=3)
    for i in range(6):
        sample = dataset[(0, i)]
        assert sample["image"].shape == (4, *patch_size) and sample["target"].shape == (3, *patch_size)
        assert set(torch.unique(sample["target"]).tolist()) <= {0.0, 1.0}
        wt, tc, et = sample["target"].bool()
        assert not (tc & ~wt).any() and not (et & ~tc).any()
        assert torch.equal(sample["image"], dataset[(0, i)]["image"])  # reproducible
        assert not torch.equal(sample["image"], plain[(0, i)]["image"])  # and really transformed


@pytest.mark.slow
@pytest.mark.real_data
def test_splits_json_is_written_next_to_the_cache_and_reproducible(real_datamodule):
    import json

    from lightning_brats.data.splits import make_splits

    stored = json.loads(real_datamodule.splits_path.read_text())
    assert real_datamodule.splits_path.parent == real_datamodule.cache.path
    assert stored["seed"] == real_datamodule.seed and stored["num_folds"] == 5 and len(stored["cases"]) == 20
    assert stored["folds"] == make_splits(sorted(stored["cases"]), 5, real_datamodule.seed)
    assert stored["folds"][0]["val"] == real_datamodule.val_ids


def _datamodule_with_splits(brats2018_root, cache_dir, tmp_path, splits):
    import json

    import hydra

    from tests.conftest import compose_config

    path = tmp_path / "my_splits.json"
    path.write_text(json.dumps(splits))
    cfg = compose_config(
        ["experiment=brats_cpu_3d", f"data.root={brats2018_root}", f"data.splits_file={path}", "data.fold=1"], tmp_path, cache_dir
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule, path


@pytest.mark.slow
@pytest.mark.real_data
def test_user_splits_file_is_used(brats2018_root, cache_dir, tmp_path):
    ids = sorted(p.name for p in brats2018_root.iterdir())
    splits = [{"train": ids[2:], "val": ids[:2]}, {"train": ids[:17], "val": ids[17:]}]  # nnU-Net's format
    datamodule, _ = _datamodule_with_splits(brats2018_root, cache_dir, tmp_path, splits)
    datamodule.setup("fit")
    assert datamodule.val_ids == ids[17:] and datamodule.train_ids == ids[:17]


@pytest.mark.slow
@pytest.mark.real_data
def test_user_splits_with_unknown_case_names_the_file(brats2018_root, cache_dir, tmp_path):
    from lightning_brats.data.readers import DataError

    splits = [{"train": ["Brats18_2013_11_1"], "val": ["Brats18_NOPE"]}] * 2
    datamodule, path = _datamodule_with_splits(brats2018_root, cache_dir, tmp_path, splits)
    with pytest.raises(DataError, match=rf"{path}: cases \['Brats18_NOPE'\] are not labelled cases"):
        datamodule.setup("fit")


def test_each_sample_names_the_case_it_was_cut_from():
    from lightning_brats.data.preprocess import CachedCase

    label = np.zeros((16, 16, 16), np.uint8)
    label[6:10, 6:10, 6:10] = 1
    # every voxel of case "c<v>" holds v, so a patch's values say which case it came from
    cases = [CachedCase(f"c{v}", np.full((2, 16, 16, 16), float(v), np.float32), label, {}) for v in (1, 2, 3)]
    dataset = TrainingSampleDataset(cases, {"wt": [1]}, (8, 8, 8), batch_size=2, oversample_foreground=0.5)
    seen = set()
    for index in range(30):
        item = dataset[(0, index)]
        assert item["case_id"] == f"c{int(item['image'].max())}" == f"c{int(item['image'].min())}"
        seen.add(item["case_id"])
    assert seen == {"c1", "c2", "c3"}
    batch = torch.utils.data.default_collate([dataset[(0, 0)], dataset[(0, 1)]])
    assert isinstance(batch["case_id"], list) and len(batch["case_id"]) == 2


BRATS18_REGIONS = {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}


def _small_core_case():
    """One case of 1000 edema (2), 100 necrosis (1) and 10 enhancing (4) voxels, each code in its own slices."""
    from lightning_brats.data.preprocess import CachedCase

    label = np.zeros((20, 20, 12), np.uint8)
    label[:, :, 0:3] = 0
    label[:10, :10, 0:10] = 2  # 1000 voxels
    label[10:20, 10:20, 10] = 1  # 100 voxels, slice 10 only
    label[0:10, 19, 11] = 4  # 10 voxels, slice 11 only
    return CachedCase("c", np.zeros((1, 20, 20, 12), np.float32), label, {})


def test_foreground_classes_follow_the_mode():
    label = _small_core_case().label
    voxel = foreground_classes(label, "voxel", BRATS18_REGIONS)
    assert [len(c) for c in voxel] == [1110]
    by_label = foreground_classes(label, "label", BRATS18_REGIONS)
    assert [sorted(set(label[tuple(c.T)].tolist())) for c in by_label] == [[1], [2], [4]]
    by_region = foreground_classes(label, "region", {**BRATS18_REGIONS, "absent": [3]})
    assert [len(c) for c in by_region] == [1110, 110, 10]  # the region the case lacks is no class
    assert foreground_classes(None, "region", BRATS18_REGIONS) == []
    with pytest.raises(ValueError, match="data.foreground_sampling='regions'"):
        foreground_classes(label, "regions", BRATS18_REGIONS)


@pytest.mark.parametrize("patch_size", [(1, 1, 1), (1, 1)])
def test_class_balanced_oversampling_centres_the_small_core_as_nnunet_does(patch_size):
    """Of 1110 tumour voxels 10 are ET: uniform voxels centre ~1 % of samples there; nnU-Net's
    class-first rule a third (``label``: code 4 in one draw of three; ``region``: ET's third plus its share of
    TC's and WT's). A 1-voxel patch's target is the centre's regions."""
    case = _small_core_case()
    shares = {}
    for mode in FOREGROUND_SAMPLING:
        dataset = TrainingSampleDataset([case], BRATS18_REGIONS, patch_size, 4, 1.0, None, seed=3, foreground_sampling=mode)
        targets = np.stack([dataset[(0, i)]["target"].numpy().reshape(3) for i in range(600)])
        assert targets[:, 0].all()  # every sample is centred on tumour
        shares[mode] = targets[:, 1:].mean(axis=0)  # TC, ET
    assert shares["voxel"][1] < 0.04 and shares["voxel"][0] < 0.2  # 110 / 1110 TC
    assert 0.25 < shares["label"][1] < 0.42 and 0.55 < shares["label"][0] < 0.75  # codes 1 and 4: 2/3
    assert 0.28 < shares["region"][1] < 0.45 and 0.6 < shares["region"][0] < 0.8  # 1/3 + 1/3 * 10/110 + ...

