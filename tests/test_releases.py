"""Each BraTS release's layout, built in a temporary folder from the same real cases, reads
back to the same images and the same WT/TC/ET masks (the shared data are never modified)."""

from __future__ import annotations

from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import pytest

from lightning_brats.data.labels import labels_to_regions
from lightning_brats.data.readers import load_case
from tests import release_layouts
from tests.conftest import BRATS20_REGIONS, BRATS_MODALITIES, SOURCE_CASES, compose_config, real_label

pytestmark = pytest.mark.real_data



def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def _build(release: str, source: Path, root: Path, **options) -> list[str]:
    """The package's builder on :data:`SOURCE_CASES`: the new case IDs in source order."""
    return [new for _, new in release_layouts.build(source, root, release, SOURCE_CASES, **options)]


def _build_brats20(source: Path, root: Path) -> list[str]:
    """Kaggle layout, uncompressed .nii, one folder deeper; the second case is case 355 with the
    odd label file name of the real download."""
    built = root / "build"
    first, second = _build("brats20", source, built)
    base = root / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData"
    base.parent.mkdir(parents=True)
    (built / "MICCAI_BraTS2020_TrainingData").rename(base)
    odd = base / "BraTS20_Training_355"
    (base / second).rename(odd)
    for path in odd.iterdir():
        part = path.name.removeprefix(f"{second}_")
        path.rename(odd / ("W39_1998.09.19_Segm.nii" if part == "seg.nii" else f"BraTS20_Training_355_{part}"))
    return [first, odd.name]


def _build_brats21(source: Path, root: Path) -> list[str]:
    return _build("brats21", source, root)


def _build_brats23(source: Path, root: Path) -> list[str]:
    """2023 names (t2f/t1n/t1ce/t2w) and labels (ET 4 -> 3)."""
    return _build("brats23", source, root)


@pytest.fixture(scope="module")
def reference(brats2018_root):
    """Images and region masks of the source cases read with the brats20 config."""
    out = {}
    for src_id in SOURCE_CASES:
        images = np.stack([nib.load(brats2018_root / src_id / f"{src_id}_{m}.nii.gz").get_fdata(dtype=np.float32) for m in BRATS_MODALITIES])
        label = real_label(brats2018_root, src_id)
        out[src_id] = (images, labels_to_regions(label, BRATS20_REGIONS))
    return out


def _assert_reads_like_reference(data: str, root: Path, ids: list[str], reference: dict, tmp_path: Path) -> None:
    """``data=<data>`` finds exactly ``ids`` under ``root``, labelled, with the reference images and regions."""
    cfg = compose_config([f"data={data}", f"data.root={root}"], tmp_path / "out")
    datamodule = hydra.utils.instantiate(cfg.data)
    cases = datamodule.find_cases()
    assert [c.case_id for c in cases] == ids
    assert all(c.label is not None for c in cases)
    for files, src_id in zip(cases, SOURCE_CASES):
        case = load_case(files, datamodule.modalities, datamodule.labels)
        images, regions = reference[src_id]
        np.testing.assert_array_equal(case.image, images)
        np.testing.assert_array_equal(labels_to_regions(case.label, datamodule.regions), regions)


@pytest.mark.slow
@pytest.mark.parametrize(
    "data,build", [("brats20", _build_brats20), ("brats21", _build_brats21), ("brats23", _build_brats23)]
)
def test_every_release_reads_the_same_images_and_regions(data, build, brats2018_root, reference, tmp_path):
    root = tmp_path / "root"
    ids = build(brats2018_root, root)
    _assert_reads_like_reference(data, root, ids, reference, tmp_path)


def test_brats23_rejects_brats20_label_codes(brats2018_root, tmp_path):
    """Label 4 is not part of the 2023 map: reading an unconverted seg file names it."""
    root = tmp_path / "root"
    case_id = "BraTS-GLI-00000-000"
    for modality, suffix in {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}.items():
        _link(brats2018_root / SOURCE_CASES[0] / f"{SOURCE_CASES[0]}_{modality}.nii.gz", root / case_id / f"{case_id}-{suffix}.nii.gz")
    cfg = compose_config(["data=brats23", f"data.root={root}"], tmp_path / "out")
    datamodule = hydra.utils.instantiate(cfg.data)
    with pytest.raises(ValueError, match=r"-seg.nii.gz: unknown label values \[4\]"):
        load_case(datamodule.find_cases()[0], datamodule.modalities, datamodule.labels)


def test_validation_release_cases_have_no_label(brats2018_root, tmp_path):
    root = tmp_path / "MICCAI_BraTS2020_ValidationData"
    for modality in BRATS_MODALITIES:
        _link(brats2018_root / SOURCE_CASES[0] / f"{SOURCE_CASES[0]}_{modality}.nii.gz",
              root / "BraTS20_Validation_001" / f"BraTS20_Validation_001_{modality}.nii.gz")
    cfg = compose_config(["data=brats20", f"data.root={root}"], tmp_path / "out")
    (case,) = hydra.utils.instantiate(cfg.data).find_cases()
    assert case.case_id == "BraTS20_Validation_001" and case.label is None


def test_brats23_reader_finds_the_shared_unlabelled_case(tmp_path):
    from tests.conftest import SHARED_DATA, _require

    root = _require(SHARED_DATA / "brats2023_unlabeled")
    cfg = compose_config(["data=brats23", f"data.root={root}"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    (files,) = datamodule.find_cases()
    assert files.case_id == "BraTS-GLI-00001-000" and files.label is None
    assert files.images["flair"].name == "BraTS-GLI-00001-000-t2f.nii.gz"
    case = load_case(files, datamodule.modalities, datamodule.labels)
    assert case.image.shape == (4, 240, 240, 155) and case.label is None


def _build_msd(source: Path, root: Path, channel_order: list[str], with_json: bool = True) -> list[str]:
    """Task01 layout: one 4D image per case in ``channel_order``, labels recoded to MSD's, dataset.json
    (or none), and a macOS ``._`` file beside the images."""
    ids = _build("msd_task01", source, root, msd_channels=channel_order)
    task = root / "Task01_BrainTumour"
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    if not with_json:
        (task / "dataset.json").unlink()
    return ids


@pytest.mark.slow
@pytest.mark.parametrize(
    "channel_order,with_json",
    [(BRATS_MODALITIES, True), (["t2", "t1ce", "flair", "t1"], True), (BRATS_MODALITIES, False)],
)
def test_msd_4d_layout_reads_the_same_images_and_regions(channel_order, with_json, brats2018_root, reference, tmp_path):
    root = tmp_path / "root"
    ids = _build_msd(brats2018_root, root, channel_order, with_json)
    _assert_reads_like_reference("msd_task01", root, ids, reference, tmp_path)  # the ._ file is not a case


# The MSD layout's errors (dataset.json without a modality, a 3D image where the 4D stack belongs)
# are checked on the phantoms, in tests/test_phantom_pipeline.py, where the public CI runs them.
