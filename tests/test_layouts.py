"""The BraTS reader on the real shared cases, and its errors on bad input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lightning_brats.data.readers import BratsFolderReader, DataError, load_case
from tests.conftest import BRATS20_LABELS, BRATS20_LAYOUT, BRATS_MODALITIES, copy_case


def _rewrite_case_file(brats2018_root: Path, tmp_path: Path, suffix: str, change) -> None:
    """Link real case Brats18_2013_11_1 into ``tmp_path`` with its ``suffix`` file replaced by
    ``change(data, affine) -> (data, affine)`` applied to the original."""
    case = copy_case(brats2018_root / "Brats18_2013_11_1", tmp_path)
    path = case / f"Brats18_2013_11_1{suffix}.nii.gz"
    img = nib.load(path)
    data, affine = change(np.asarray(img.dataobj).copy(), img.affine)
    path.unlink()  # the link, not the shared file
    nib.save(nib.Nifti1Image(data, affine), path)


def _load_first_case(root: Path):
    return load_case(BRATS20_LAYOUT.find_cases(root)[0], BRATS_MODALITIES, BRATS20_LABELS)


@pytest.mark.real_data
def test_finds_the_twenty_real_cases(brats2018_root):
    cases = BRATS20_LAYOUT.find_cases(brats2018_root)
    assert len(cases) == 20
    assert cases[0].case_id == "Brats18_2013_11_1"
    assert all(c.label is not None and list(c.images) == BRATS_MODALITIES for c in cases)
    # "_t1ce" is never mistaken for "_t1"
    assert all(c.images["t1"].name.endswith("_t1.nii.gz") for c in cases)


@pytest.mark.real_data
def test_load_real_case_shapes_labels_and_modality_order(brats2018_root):
    case_files = BRATS20_LAYOUT.find_cases(brats2018_root)[4]
    case = load_case(case_files, ["t2", "flair"], BRATS20_LABELS)
    assert case.image.shape == (2, 240, 240, 155) and case.image.dtype == np.float32
    assert case.label.shape == (240, 240, 155)
    assert set(np.unique(case.label)) <= {0, 1, 2, 4} and {1, 2, 4} <= set(np.unique(case.label))
    np.testing.assert_array_equal(case.image[0], nib.load(case_files.images["t2"]).get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(case.image[1], nib.load(case_files.images["flair"]).get_fdata(dtype=np.float32))
    np.testing.assert_allclose(case.spacing, [1, 1, 1])


def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"data root .*nowhere does not exist.*<case>_flair"):
        BRATS20_LAYOUT.find_cases(tmp_path / "nowhere")


def test_empty_root_names_path_and_layout(tmp_path):
    with pytest.raises(DataError, match=rf"no cases found under {tmp_path}; expected case folders"):
        BRATS20_LAYOUT.find_cases(tmp_path)


@pytest.mark.real_data
def test_missing_modality_names_case_and_file(brats2018_root, tmp_path):
    case = copy_case(brats2018_root / "Brats18_2013_11_1", tmp_path)
    (case / "Brats18_2013_11_1_t1ce.nii.gz").unlink()
    with pytest.raises(DataError, match=r"case Brats18_2013_11_1 .*missing modality \['t1ce'\].*Brats18_2013_11_1_t1ce.nii.gz"):
        BRATS20_LAYOUT.find_cases(tmp_path)


@pytest.mark.real_data
def test_duplicate_case_ids_are_an_error(brats2018_root, tmp_path):
    copy_case(brats2018_root / "Brats18_2013_11_1", tmp_path / "a")
    copy_case(brats2018_root / "Brats18_2013_11_1", tmp_path / "b")
    with pytest.raises(DataError, match="case ID Brats18_2013_11_1 appears twice"):
        BRATS20_LAYOUT.find_cases(tmp_path)


@pytest.mark.real_data
def test_shape_mismatch_names_the_file(brats2018_root, tmp_path):
    case = copy_case(brats2018_root / "Brats18_2013_11_1", tmp_path)
    bad = case / "Brats18_2013_11_1_t2.nii.gz"
    bad.unlink()
    nib.save(nib.Nifti1Image(np.zeros((240, 240, 150), np.int16), np.eye(4)), bad)
    with pytest.raises(DataError, match=r"Brats18_2013_11_1_t2.nii.gz: shape \(240, 240, 150\) differs"):
        load_case(BRATS20_LAYOUT.find_cases(tmp_path)[0], BRATS_MODALITIES, BRATS20_LABELS)


@pytest.mark.real_data
def test_unknown_label_names_the_file(brats2018_root, tmp_path):
    _rewrite_case_file(brats2018_root, tmp_path, "_seg", lambda d, a: (np.where(d == 4, 3, d).astype(d.dtype), a))
    with pytest.raises(DataError, match=r"_seg.nii.gz: unknown label values \[3\]"):
        _load_first_case(tmp_path)


@pytest.mark.real_data
def test_corrupt_nifti_names_the_file(brats2018_root, tmp_path):
    case = copy_case(brats2018_root / "Brats18_2013_11_1", tmp_path)
    bad = case / "Brats18_2013_11_1_flair.nii.gz"
    data = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"_flair.nii.gz: cannot read NIfTI"):
        load_case(BRATS20_LAYOUT.find_cases(tmp_path)[0], BRATS_MODALITIES, BRATS20_LABELS)


def test_other_suffixes_are_a_config_away(tmp_path):
    layout = BratsFolderReader({"flair": "-t2f", "t1ce": "-t1c"}, "-seg", [".nii.gz"])
    case = tmp_path / "BraTS-GLI-00001-000"
    case.mkdir()
    for suffix in ("-t2f", "-t1c", "-seg"):
        nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4)), case / f"BraTS-GLI-00001-000{suffix}.nii.gz")
    (found,) = layout.find_cases(tmp_path)
    assert found.case_id == "BraTS-GLI-00001-000" and found.label.name.endswith("-seg.nii.gz")


@pytest.mark.real_data
def test_nan_voxels_name_the_file(brats2018_root, tmp_path):
    def with_nan(data, affine):
        data = data.astype(np.float32)
        data[100, 100, 70] = np.nan
        return data, affine

    _rewrite_case_file(brats2018_root, tmp_path, "_t1", with_nan)
    with pytest.raises(DataError, match=r"Brats18_2013_11_1_t1.nii.gz: contains NaN or Inf voxels"):
        _load_first_case(tmp_path)


@pytest.mark.real_data
def test_4d_file_where_3d_is_expected_names_the_file(brats2018_root, tmp_path):
    _rewrite_case_file(brats2018_root, tmp_path, "_t1ce", lambda d, a: (np.stack([d] * 2, axis=-1), a))
    with pytest.raises(DataError, match=r"_t1ce.nii.gz: expected a 3D volume, found shape \(240, 240, 155, 2\)"):
        _load_first_case(tmp_path)


@pytest.mark.real_data
def test_affine_mismatch_names_the_file(brats2018_root, tmp_path):
    _rewrite_case_file(brats2018_root, tmp_path, "_t2", lambda d, a: (d, a @ np.diag([2.0, 1, 1, 1])))
    with pytest.raises(DataError, match=r"Brats18_2013_11_1_t2.nii.gz: affine differs from .*_flair.nii.gz"):
        _load_first_case(tmp_path)
