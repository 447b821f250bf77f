"""The LGG set (Buda et al.): TIFF slices stacked per patient, 2D only, split by patient."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
from PIL import Image

from lightning_brats.cli.check_data import check_dataset
from lightning_brats.data.readers import DataError, load_case
from lightning_brats.data.sampling import slice_foreground_fractions
from tests.conftest import compose_config

pytestmark = pytest.mark.real_data

PATIENT = "TCGA_CS_4941_19960909"  # 23 slices


def _layout():
    from lightning_brats.data.readers import LggSliceReader

    return LggSliceReader({"pre_contrast": 0, "flair": 1, "post_contrast": 2})


def _link_patient(lgg_root: Path, root: Path, patient: str = PATIENT) -> Path:
    folder = root / patient
    folder.mkdir(parents=True)
    for src in (lgg_root / patient).iterdir():
        (folder / src.name).symlink_to(src)
    return folder


def _replace(path: Path, write) -> None:
    path.unlink()  # a symlink to the shared file: remove the link, never the file
    write(path)


def test_patients_stack_in_numeric_slice_order(lgg_root):
    cases = _layout().find_cases(lgg_root)
    assert len(cases) == 6 and all(c.case_id.startswith("TCGA_") for c in cases)
    files = next(c for c in cases if c.case_id == PATIENT)
    assert [p.name for p in files.slices[8:11]] == [f"{PATIENT}_{n}.tif" for n in (9, 10, 11)]
    case = load_case(files, ["flair", "pre_contrast"], {"abnormality": 255})
    assert case.image.shape == (2, 256, 256, 23) and case.label.shape == (256, 256, 23)
    # volume slice 9 is file _10 (alphabetical order would put _10 second)
    raw = np.asarray(Image.open(lgg_root / PATIENT / f"{PATIENT}_10.tif"))
    np.testing.assert_array_equal(case.image[0, ..., 9], raw[..., 1])  # FLAIR is channel 1
    np.testing.assert_array_equal(case.image[1, ..., 9], raw[..., 0])
    mask = np.asarray(Image.open(lgg_root / PATIENT / f"{PATIENT}_10_mask.tif"))
    np.testing.assert_array_equal(case.label[..., 9], mask)
    assert set(np.unique(case.label)) == {0, 255}


def test_3d_sampling_is_refused_with_a_clear_error(lgg_root, tmp_path):
    cfg = compose_config(["data=lgg", f"data.root={lgg_root}", "data.sampling=3d"], tmp_path)
    with pytest.raises(Exception, match=r"data.sampling=3d is not possible .*supports only \['2d'\]"):
        hydra.utils.instantiate(cfg.data)


@pytest.mark.slow
def test_lgg_cpu_splits_by_patient_and_samples_slices(lgg_root, cache_dir, tmp_path):
    cfg = compose_config(["experiment=lgg_cpu", f"data.root={lgg_root}"], tmp_path, cache_dir)
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    patients = sorted(p.name for p in lgg_root.iterdir() if p.is_dir())
    assert sorted(dm.train_ids + dm.val_ids) == patients and len(dm.val_ids) == 2
    assert not set(dm.train_ids) & set(dm.val_ids)
    samples = [dm.train_set[(0, i)] for i in range(32)]
    assert all(s["image"].shape == (3, 128, 128) and s["target"].shape == (1, 128, 128) for s in samples)
    oversampled = [s for i, s in enumerate(samples) if dm.train_set.is_oversampled(i)]
    assert oversampled and all(s["target"].any() for s in oversampled)


@pytest.mark.slow  # preprocesses the 6 real LGG patients
def test_min_foreground_fraction_drops_slices_and_reports(lgg_root, cache_dir, tmp_path):
    minimum = 0.01
    cfg = compose_config(
        ["experiment=lgg_cpu", f"data.root={lgg_root}", f"data.min_foreground_fraction={minimum}", "data.augment=null"],
        tmp_path,
        cache_dir,
    )
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    dataset = dm.train_set
    cases = [dm.cache.load(i) for i in dm.train_ids]
    fractions = [slice_foreground_fractions(c.label) for c in cases]
    total, kept = sum(len(f) for f in fractions), sum(int((f >= minimum).sum()) for f in fractions)
    assert 0 < kept < total
    assert dataset.dropped.startswith(f"dropped {total - kept} of {total} training slices")
    for case, slices in zip(dataset.cases, dataset.slices):
        assert (slice_foreground_fractions(case.label)[slices] >= minimum).all()
    # whole slices fit the patch, so every sample now shows abnormality, not only the oversampled ones
    assert all(dataset[(0, i)]["target"].any() for i in range(48))


@pytest.mark.slow
def test_min_foreground_fraction_drops_3d_cases(real_datamodule):
    from lightning_brats.data.sampling import TrainingSampleDataset

    cases = real_datamodule.train_set.cases
    fractions = sorted(np.count_nonzero(c.label) / c.label.size for c in cases)
    minimum = float(np.mean(fractions[3:5]))  # between the 4th and 5th smallest
    dataset = TrainingSampleDataset(cases, real_datamodule.regions, (32, 32, 32), 2, min_foreground_fraction=minimum)
    assert len(dataset.cases) == len(cases) - 4
    assert dataset.dropped == f"dropped 4 of {len(cases)} training cases"
    with pytest.raises(ValueError, match="leaves no training data"):
        TrainingSampleDataset(cases, real_datamodule.regions, (32, 32, 32), 2, min_foreground_fraction=fractions[-1] + 0.01)


def test_missing_slice_names_the_case_and_slice(lgg_root, tmp_path):
    folder = _link_patient(lgg_root, tmp_path)
    (folder / f"{PATIENT}_7.tif").unlink()
    (folder / f"{PATIENT}_7_mask.tif").unlink()
    with pytest.raises(DataError, match=rf"case {PATIENT} in .*slices \[7\] are missing"):
        _layout().find_cases(tmp_path)


def test_slice_without_mask_names_the_case(lgg_root, tmp_path):
    folder = _link_patient(lgg_root, tmp_path)
    (folder / f"{PATIENT}_12_mask.tif").unlink()
    with pytest.raises(DataError, match=rf"case {PATIENT} in .*slices \[12\] lack an image or a _mask file"):
        _layout().find_cases(tmp_path)


def test_corrupt_tiff_names_the_file(lgg_root, tmp_path):
    folder = _link_patient(lgg_root, tmp_path)
    bad = folder / f"{PATIENT}_5.tif"
    data = bad.read_bytes()
    _replace(bad, lambda p: p.write_bytes(data[:1000]))
    (files,) = _layout().find_cases(tmp_path)
    with pytest.raises(DataError, match=rf"{PATIENT}_5.tif: cannot read image"):
        load_case(files, ["flair"], {"abnormality": 255})


def test_unknown_mask_value_names_the_mask(lgg_root, tmp_path):
    folder = _link_patient(lgg_root, tmp_path)
    mask = folder / f"{PATIENT}_11_mask.tif"
    values = np.asarray(Image.open(mask)).copy()
    values[:10, :10] = 128
    _replace(mask, lambda p: Image.fromarray(values).save(p))
    (files,) = _layout().find_cases(tmp_path)
    with pytest.raises(DataError, match=rf"{PATIENT}_11_mask.tif: unknown label values \[128\]"):
        load_case(files, ["flair"], {"abnormality": 255})


def test_slice_of_another_size_names_the_file(lgg_root, tmp_path):
    folder = _link_patient(lgg_root, tmp_path)
    image = folder / f"{PATIENT}_3.tif"
    small = np.asarray(Image.open(image))[:128, :128].copy()
    _replace(image, lambda p: Image.fromarray(small).save(p))
    (files,) = _layout().find_cases(tmp_path)
    with pytest.raises(DataError, match=rf"{PATIENT}_3.tif: shape \(128, 128, 3\) differs"):
        load_case(files, ["flair"], {"abnormality": 255})


def test_check_data_reads_lgg(lgg_root, tmp_path):
    cfg = compose_config(["data=lgg", f"data.root={lgg_root}"], tmp_path)
    report = check_dataset(hydra.utils.instantiate(cfg.data))
    assert not report.problems
    rows = {r["case_id"]: r for r in report.rows}
    assert len(rows) == 6 and rows[PATIENT]["shape"] == (256, 256, 23)
    mask_voxels = sum(
        int(np.count_nonzero(np.asarray(Image.open(p)))) for p in (lgg_root / PATIENT).glob("*_mask.tif")
    )
    assert rows[PATIENT]["label_voxels"] == {"abnormality": mask_voxels}
