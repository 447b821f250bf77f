"""Readers, preprocessing and evaluation on the synthetic phantoms (``lightning_brats.data.phantoms``),
with no real data: what the public CI runs of the pipeline the ``real_data`` tests check on the real
cases. Each release's layout is built by the package's builder (``release_layouts.build``) from the
phantoms and must read back to the phantoms' own images and regions; the preprocessing cache is built,
reused and undone voxel for voxel; eval.py scores predictions whose Dice and HD95 are worked out here
(two cubes offset by k voxels on a 2 mm grid: HD95 = 2k mm)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import pytest

from lightning_brats.data.labels import labels_to_regions
from lightning_brats.data.preprocess import PreprocessedCache, restore_to_original
from lightning_brats.data.readers import DataError, load_case
from lightning_brats.data.settings import PreprocessingSettings
from tests import release_layouts
from tests.conftest import (
    BRATS20_LABELS,
    BRATS20_LAYOUT,
    BRATS20_REGIONS,
    BRATS_HD95_PENALTY_MM,
    BRATS_MODALITIES,
    compose_config,
    compose_tool_config,
    copy_case,
)

#: Phantom cases (of conftest's ``phantom_root``: 64 x 64 x 48 voxels of 2 mm) the layouts are built from.
CASES = ["BraTS20_Training_001", "BraTS20_Training_002"]
SPACING_MM = 2.0


@pytest.fixture(scope="module")
def reference(phantom_root):
    """``{case: (images (4, X, Y, Z) float32 in BRATS_MODALITIES order, labels (X, Y, Z))}`` read with nibabel."""
    out = {}
    for case in CASES:
        images = np.stack([nib.load(phantom_root / case / f"{case}_{m}.nii.gz").get_fdata(dtype=np.float32)
                           for m in BRATS_MODALITIES])
        out[case] = (images, np.asarray(nib.load(phantom_root / case / f"{case}_seg.nii.gz").dataobj))
    return out


def _datamodule(data: str, root: Path, tmp_path: Path):
    return hydra.utils.instantiate(compose_config([f"data={data}", f"data.root={root}"], tmp_path / "out").data)


# ---- readers: every layout the builder writes, read back ---------------------------------------


@pytest.mark.parametrize("release,options", [
    ("brats20", {}), ("brats21", {}), ("brats23", {}), ("brats_men", {}),
    ("msd_task01", {}), ("msd_task01", {"msd_channels": ["t2", "t1ce", "flair", "t1"]}),
], ids=["brats20", "brats21", "brats23", "brats_men", "msd_task01", "msd_task01-reordered"])
def test_each_release_layout_reads_back_the_phantoms_images_and_regions(release, options, phantom_root, reference, tmp_path):
    """The reader of ``data=<release>`` finds the built cases, in order, labelled, and gives the source's
    four images in the config's modality order and the source's WT/TC/ET (whatever the release's codes)."""
    root = tmp_path / "root"
    ids = [new for _, new in release_layouts.build(phantom_root, root, release, CASES, **options)]
    datamodule = _datamodule(release, root, tmp_path)
    found = datamodule.find_cases()
    assert [c.case_id for c in found] == ids and len(ids) == 2
    assert all(c.label is not None for c in found)
    order = [BRATS_MODALITIES.index(m) for m in datamodule.modalities]
    for files, source in zip(found, CASES):
        case = load_case(files, datamodule.modalities, datamodule.labels)
        images, label = reference[source]
        np.testing.assert_array_equal(case.image, images[order])
        np.testing.assert_array_equal(labels_to_regions(case.label, datamodule.regions),
                                      labels_to_regions(label, BRATS20_REGIONS))
        np.testing.assert_allclose(case.spacing, [SPACING_MM] * 3)


def test_radiotherapy_layout_reads_t1ce_and_the_whole_tumour_as_gtv(phantom_root, reference, tmp_path):
    root = tmp_path / "root"
    ids = [new for _, new in release_layouts.build(phantom_root, root, "brats_men_rt", CASES)]
    datamodule = _datamodule("brats_men_rt", root, tmp_path)
    assert [c.case_id for c in datamodule.find_cases()] == ids
    for files, source in zip(datamodule.find_cases(), CASES):
        case = load_case(files, datamodule.modalities, datamodule.labels)
        images, label = reference[source]
        np.testing.assert_array_equal(case.image, images[[BRATS_MODALITIES.index("t1ce")]])
        np.testing.assert_array_equal(case.label > 0, label > 0)


def test_msd_dataset_json_without_a_modality_names_the_file(phantom_root, tmp_path):
    root = tmp_path / "root"
    release_layouts.build(phantom_root, root, "msd_task01", CASES)
    path = root / "Task01_BrainTumour" / "dataset.json"
    path.write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w", "2": "T2w"}}))
    with pytest.raises(ValueError, match=r"dataset.json: modalities \['t1gd'\] are not in"):
        _datamodule("msd_task01", root, tmp_path).find_cases()


def test_msd_3d_image_where_4d_is_expected_names_the_file(phantom_root, tmp_path):
    root = tmp_path / "root"
    release_layouts.build(phantom_root, root, "msd_task01", CASES)
    (root / "Task01_BrainTumour" / "dataset.json").unlink()
    bad = root / "Task01_BrainTumour" / "imagesTr" / "BRATS_002.nii.gz"
    bad.unlink()
    bad.symlink_to(phantom_root / CASES[1] / f"{CASES[1]}_flair.nii.gz")
    datamodule = _datamodule("msd_task01", root, tmp_path)
    with pytest.raises(ValueError, match=r"BRATS_002.nii.gz: expected a 4D stack of modalities, found shape \(64, 64, 48\)"):
        load_case(datamodule.find_cases()[1], datamodule.modalities, datamodule.labels)


# ---- preprocessing: the cache built, reused, and undone -----------------------------------------


def _cache(folder: Path, **options) -> PreprocessedCache:
    return PreprocessedCache(folder, "phantoms", PreprocessingSettings(BRATS_MODALITIES, **options), BRATS20_LABELS)


def test_cache_build_crops_zscores_and_goes_back_voxel_for_voxel(phantom_root, reference, tmp_path):
    root = tmp_path / "root"
    for case in CASES:
        copy_case(phantom_root / case, root)
    cases = BRATS20_LAYOUT.find_cases(root)
    cache = _cache(tmp_path / "cache")
    cache.ensure(cases, log=lambda m: None)
    for case in CASES:
        images, label = reference[case]
        cached = cache.load(case)
        box = np.asarray(cached.record["crop_box"])
        # the crop is the bounding box of the non-zero voxels of any modality, computed here
        nonzero = np.argwhere(np.any(images != 0, axis=0))
        np.testing.assert_array_equal(box, np.stack([nonzero.min(0), nonzero.max(0) + 1], axis=1))
        assert cached.image.shape == (4, *(box[:, 1] - box[:, 0])) and cached.label.shape == cached.image.shape[1:]
        inside = tuple(slice(a, b) for a, b in box)
        brain = np.any(images[(slice(None), *inside)] != 0, axis=0)
        for channel, source in zip(np.asarray(cached.image), images[(slice(None), *inside)]):
            expected = (source[brain] - source[brain].mean()) / source[brain].std()
            np.testing.assert_allclose(channel[brain], expected, atol=1e-4)
            assert not channel[~brain].any()
        np.testing.assert_array_equal(restore_to_original(np.asarray(cached.label), cached.record), label)


def test_cache_is_reused_redoes_a_missing_case_and_keys_its_settings(phantom_root, tmp_path):
    root = tmp_path / "root"
    for case in CASES:
        copy_case(phantom_root / case, root)
    cases = BRATS20_LAYOUT.find_cases(root)
    cache = _cache(tmp_path / "cache", spacing=[4, 4, 4])
    cache.ensure(cases, log=lambda m: None)
    first = {p.name: p.stat().st_mtime_ns for p in cache.path.iterdir()}
    (cache.path / f"{CASES[1]}.json").unlink()  # as if interrupted before the record
    cache.ensure(cases, log=lambda m: None)
    second = {p.name: p.stat().st_mtime_ns for p in cache.path.iterdir()}
    assert second[f"{CASES[0]}_image.npy"] == first[f"{CASES[0]}_image.npy"]
    assert second[f"{CASES[1]}_image.npy"] != first[f"{CASES[1]}_image.npy"]
    assert not [p for p in cache.path.iterdir() if ".tmp-" in p.name]
    record = cache.load(CASES[0]).record
    assert record["original_shape"] == [64, 64, 48] and record["preprocessed_spacing"] == [4.0, 4.0, 4.0]
    assert _cache(tmp_path / "cache", spacing=[2, 2, 2]).path != cache.path


def test_resampled_cache_goes_back_to_the_original_grid_keeping_the_tumour(phantom_root, reference, tmp_path):
    root = tmp_path / "root"
    copy_case(phantom_root / CASES[0], root)
    cache = _cache(tmp_path / "cache", spacing=[4, 4, 4])
    cache.ensure(BRATS20_LAYOUT.find_cases(root), log=lambda m: None)
    cached = cache.load(CASES[0])
    assert all(abs(n - c / 2) <= 0.5 for n, c in zip(cached.label.shape, cached.record["cropped_shape"]))
    restored = restore_to_original(np.asarray(cached.label), cached.record)
    truth = reference[CASES[0]][1]
    assert restored.shape == truth.shape and set(np.unique(restored)) <= {0, 1, 2, 4}
    wt, back = truth > 0, restored > 0
    assert 2 * (wt & back).sum() / (wt.sum() + back.sum()) > 0.85


def test_a_truncated_file_is_named_and_cached_cases_stay_intact(phantom_root, tmp_path):
    root = tmp_path / "root"
    copy_case(phantom_root / CASES[0], root)
    cache = _cache(tmp_path / "cache", spacing=[4, 4, 4])
    cache.ensure(BRATS20_LAYOUT.find_cases(root), log=lambda m: None)
    before = {p.name: p.read_bytes() for p in cache.path.iterdir()}
    bad = copy_case(phantom_root / CASES[1], root) / f"{CASES[1]}_t1.nii.gz"
    data = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(data[:200])
    with pytest.raises(DataError, match=f"{CASES[1]}_t1.nii.gz: cannot read NIfTI"):
        cache.ensure(BRATS20_LAYOUT.find_cases(root), log=lambda m: None)
    assert {p.name: p.read_bytes() for p in cache.path.iterdir()} == before


# ---- eval.py: scores with a known answer ---------------------------------------------------------


def _write_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), np.diag([-SPACING_MM, -SPACING_MM, SPACING_MM, 1.0])), path)


def test_eval_scores_cubes_offset_by_k_voxels_with_the_worked_out_dice_and_hd95(phantom_root, tmp_path):
    """Ground truth: an 8^3 cube of oedema (code 2: WT only; TC and ET empty in truth and prediction).
    Predictions: the same cube (Dice 1, HD95 0), the cube moved k = 2 voxels along z, and nothing.
    Moved: the overlap is 8 x 8 x 6 voxels, Dice = 2 * 384 / 1024 = 0.75, sensitivity 6/8; the moved
    cube's top face (64 of its 296 surface voxels, > 5 %) lies k steps above the truth's top face and no
    surface voxel lies farther, so HD95 = k * 2 mm = 4 mm. Nothing predicted: Dice 0, BraTS's penalty."""
    truth_root, predictions = tmp_path / "gt", tmp_path / "pred"
    cube = np.zeros((64, 64, 48), np.uint8)
    cube[20:28, 20:28, 16:24] = 2
    moved = np.roll(cube, 2, axis=2)
    shown = {"BraTS20_Training_001": cube, "BraTS20_Training_002": moved, "BraTS20_Training_003": np.zeros_like(cube)}
    for case, prediction in shown.items():
        folder = truth_root / case
        folder.mkdir(parents=True)
        for modality in BRATS_MODALITIES:
            (folder / f"{case}_{modality}.nii.gz").symlink_to(phantom_root / case / f"{case}_{modality}.nii.gz")
        _write_label(folder / f"{case}_seg.nii.gz", cube)
        _write_label(predictions / f"{case}.nii.gz", prediction)
    from lightning_brats.cli.eval import evaluate

    cfg = compose_tool_config("eval", [f"ground_truth={truth_root}", f"predictions={predictions}", "data=brats20",
                                       "logger=csv", "pictures=false"], tmp_path / "out")
    evaluate(cfg)
    with open(tmp_path / "out" / "metrics.csv") as handle:
        rows = {r["case_id"]: r for r in csv.DictReader(handle)}
    assert list(rows) == list(shown)
    same, shifted, empty = (rows[c] for c in shown)
    assert float(same["dice_wt"]) == 1.0 and float(same["hd95_wt"]) == 0.0
    assert float(shifted["dice_wt"]) == pytest.approx(0.75)
    assert float(shifted["sensitivity_wt"]) == pytest.approx(6 / 8)
    assert float(shifted["specificity_wt"]) == pytest.approx(1 - 128 / (64 * 64 * 48 - 512))
    assert float(shifted["hd95_wt"]) == pytest.approx(2 * SPACING_MM)
    assert float(shifted["volume_true_ml_wt"]) == pytest.approx(512 * SPACING_MM**3 / 1000)
    assert float(empty["dice_wt"]) == 0.0 and float(empty["hd95_wt"]) == BRATS_HD95_PENALTY_MM
    for row in rows.values():  # regions empty in truth and prediction: BraTS scores them perfect
        for region in ("tc", "et"):
            assert float(row[f"dice_{region}"]) == 1.0 and float(row[f"hd95_{region}"]) == 0.0
