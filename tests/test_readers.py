"""The reader registry (``data.layout.reader``), the ``CaseReader`` Protocol every reader follows, and
the old names (``lightning_brats.data.layouts.*``, ``BratsDataModule``) that stored configs and
checkpoints still hold. Tiny cases are written here in each layout (no real data needed)."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from lightning_brats.data import readers
from lightning_brats.data.datamodule import BratsDataModule, SegmentationDataModule, adopt_legacy_state
from lightning_brats.data.readers import READERS, CaseReader, CaseSource, DataError, load_case, make_reader
from lightning_brats.data.settings import PreprocessingSettings
from tests.conftest import compose_config

#: the readers this version ships, written out by hand (not read from the registry under test)
SHIPPED = {"brats_folders", "msd", "lgg_slices"}
#: data config -> the reader it names
CONFIG_READERS = {"brats20": "brats_folders", "brats23": "brats_folders", "brats_men_rt": "brats_folders",
                  "msd_task01": "msd", "lgg": "lgg_slices"}


def _volume(shape, offset):
    return (np.arange(np.prod(shape), dtype=np.int16).reshape(shape) + offset).astype(np.int16)


def _write_brats(root: Path) -> tuple[dict, np.ndarray]:
    folder = root / "Brats_001"
    folder.mkdir(parents=True)
    images = {m: _volume((4, 5, 3), 100 * i) for i, m in enumerate(["flair", "t1", "t1ce", "t2"])}
    for m, a in images.items():
        nib.save(nib.Nifti1Image(a, np.eye(4)), folder / f"Brats_001_{m}.nii.gz")
    label = np.zeros((4, 5, 3), np.uint8)
    label[1, 2, 1], label[2, 2, 1] = 4, 2
    nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "Brats_001_seg.nii.gz")
    return images, label


def _write_msd(root: Path) -> tuple[dict, np.ndarray]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    # channel order of the archive: FLAIR, T1w, t1gd, T2w (the default without a dataset.json)
    images = {m: _volume((4, 5, 3), 100 * i) for i, m in enumerate(["flair", "t1", "t1ce", "t2"])}
    stack = np.stack(list(images.values()), axis=-1)
    nib.save(nib.Nifti1Image(stack, np.eye(4)), root / "imagesTr" / "BRATS_001.nii.gz")
    label = np.zeros((4, 5, 3), np.uint8)
    label[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / "BRATS_001.nii.gz")
    return images, label


def _write_lgg(root: Path) -> tuple[dict, np.ndarray]:
    folder = root / "TCGA_XX_0001_20000101"
    folder.mkdir(parents=True)
    slices = [np.full((6, 7, 3), [10 * n, 10 * n + 1, 10 * n + 2], np.uint8) for n in range(1, 12)]
    masks = [np.zeros((6, 7), np.uint8) for _ in slices]
    masks[9][2, 3] = 255  # slice number 10, the 10th slice (sorted as text it would be the 2nd)
    for n, (image, mask) in enumerate(zip(slices, masks), start=1):
        Image.fromarray(image).save(folder / f"TCGA_XX_0001_20000101_{n}.tif")
        Image.fromarray(mask).save(folder / f"TCGA_XX_0001_20000101_{n}_mask.tif")
    images = {m: np.stack([s[..., c] for s in slices], axis=-1)
              for m, c in (("pre_contrast", 0), ("flair", 1), ("post_contrast", 2))}
    return images, np.stack(masks, axis=-1)


WRITERS = {"brats20": _write_brats, "msd_task01": _write_msd, "lgg": _write_lgg}


def test_registry_holds_the_shipped_readers_under_their_names():
    assert set(READERS) == SHIPPED
    assert all(cls.name == name for name, cls in READERS.items())


def test_unknown_reader_name_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        make_reader({"reader": "brats_folder", "modality_suffixes": {"flair": "_flair"}})
    message = str(error.value)
    assert "data.release.layout.reader='brats_folder' is not a known reader" in message
    assert all(repr(name) in message for name in SHIPPED)


def test_layout_without_a_reader_and_wrong_arguments_are_refused():
    with pytest.raises(ValueError, match=r"names no reader: set data.release.layout.reader to one of \["):
        make_reader({"modality_suffixes": {"flair": "_flair"}})
    with pytest.raises(ValueError, match=r"reader 'msd' cannot take \['modality_suffixes'\]"):
        make_reader({"reader": "msd", "modality_suffixes": {"flair": "_flair"}})


def test_register_reader_refuses_a_taken_name():
    class Impostor(readers.BratsFolderReader):
        name = "msd"

    with pytest.raises(ValueError, match="reader name 'msd' is taken by MsdReader"):
        readers.register_reader(Impostor)
    assert READERS["msd"] is readers.MsdReader


def _protocol_methods(protocol) -> dict[str, list[str]]:
    return {name: list(inspect.signature(getattr(protocol, name)).parameters)
            for name in ("describe", "find_cases", "load_case")}


@pytest.mark.parametrize("data", sorted(CONFIG_READERS))
def test_each_data_config_names_a_reader_that_satisfies_the_protocol(data, tmp_path):
    cfg = compose_config([f"data={data}", "data.root=/nowhere"], tmp_path)
    reader = make_reader(cfg.data.release.layout)
    assert reader.name == CONFIG_READERS[data] and type(reader) is READERS[reader.name]
    assert isinstance(reader, CaseReader)
    assert set(reader.sampling) <= {"2d", "3d"} and reader.sampling
    # the same arguments as the Protocol's, in the same order (the runtime check only sees names)
    wanted = _protocol_methods(CaseReader)
    assert {name: list(inspect.signature(getattr(type(reader), name)).parameters) for name in wanted} == wanted
    with pytest.raises(DataError, match=r"data root /nowhere does not exist .*expected"):
        reader.find_cases("/nowhere")


@pytest.mark.parametrize("data", sorted(WRITERS))
def test_each_reader_finds_and_loads_what_was_written(data, tmp_path):
    images, label = WRITERS[data](tmp_path / "root")
    cfg = compose_config([f"data={data}", f"data.root={tmp_path / 'root'}"], tmp_path)
    reader = make_reader(cfg.data.release.layout)
    (files,) = reader.find_cases(tmp_path / "root")
    assert isinstance(files, CaseSource) and files.labelled and files.label_source is not None
    assert all(p.is_file() for p in files.sources())
    modalities = list(cfg.data.preprocessing.modalities)[::-1]  # channels follow the order asked for
    labels = dict(cfg.data.release.labels)
    for case in (reader.load_case(files, modalities, labels), load_case(files, modalities, labels)):
        np.testing.assert_array_equal(case.image, np.stack([images[m] for m in modalities]).astype(np.float32))
        np.testing.assert_array_equal(case.label, label)
    assert load_case(files, modalities, labels, read_label=False).label is None


def test_slice_files_name_their_folder_and_files_not_images_or_label(tmp_path):
    _write_lgg(tmp_path)
    reader = make_reader({"reader": "lgg_slices", "channels": {"flair": 1}})
    (files,) = reader.find_cases(tmp_path)
    folder = tmp_path / "TCGA_XX_0001_20000101"
    assert files.folder == folder and files.label_source == folder
    assert not hasattr(files, "images") and not hasattr(files, "label")
    assert [p.name for p in files.slices[:3]] == [f"{folder.name}_{n}.tif" for n in (1, 2, 3)]
    assert files.sources() == [*files.slices, *files.masks] and len(files.sources()) == 22


def test_old_layout_targets_and_imports_still_work(tmp_path):
    from lightning_brats.data import layouts

    _write_brats(tmp_path)
    old = {"_target_": "lightning_brats.data.layouts.BratsLayout",
           "modality_suffixes": {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2"}, "label_suffix": "_seg"}
    reader = make_reader(old)
    assert type(reader) is readers.BratsFolderReader and layouts.BratsLayout is readers.BratsFolderReader
    assert [c.case_id for c in reader.find_cases(tmp_path)] == ["Brats_001"]
    assert layouts.MsdLayout is readers.MsdReader and layouts.SliceLayout is readers.LggSliceReader


def _old_data_config(cfg) -> dict:
    """``cfg.data`` as a checkpoint from before the rename stores it (flat: the release's and the plan's keys
    beside the datamodule's, as before the data config was split)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data = {**{k: v for k, v in data.items() if k not in ("release", "preprocessing")}, **data["release"], **data["preprocessing"]}
    data["_target_"] = "lightning_brats.data.datamodule.BratsDataModule"
    layout = dict(data["layout"])
    layout["_target_"] = "lightning_brats.data.layouts.BratsLayout"
    del layout["reader"]
    data["layout"] = layout
    return data


def test_old_datamodule_target_still_instantiates_and_warns(tmp_path):
    _write_brats(tmp_path / "root")
    cfg = compose_config(["data=brats20", f"data.root={tmp_path / 'root'}", "data.spacing=null"], tmp_path)
    old = _old_data_config(cfg)
    with pytest.warns(FutureWarning, match="BratsDataModule is deprecated.*SegmentationDataModule"):
        dm = hydra.utils.instantiate(old)
    assert isinstance(dm, SegmentationDataModule) and type(dm.reader) is readers.BratsFolderReader
    assert [c.case_id for c in dm.find_cases()] == ["Brats_001"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = hydra.utils.instantiate(cfg.data)
    assert type(new) is SegmentationDataModule
    # the same preprocessing and the same cache folder either way
    assert dm.preprocessing == new.preprocessing and dm.cache.path == new.cache.path
    # a checkpoint's old data config passes the known-keys check of prediction
    assert PreprocessingSettings.from_data(old, source="old.ckpt") == new.preprocessing


def test_pre_rename_datamodule_state_is_adopted(tmp_path):
    _write_brats(tmp_path / "root")
    cfg = compose_config(["data=brats20", f"data.root={tmp_path / 'root'}"], tmp_path)
    dm = hydra.utils.instantiate(cfg.data)
    checkpoint = {"BratsDataModule": {"train_sampler": {"epoch": 2}}}
    adopt_legacy_state(checkpoint, dm)
    assert checkpoint["SegmentationDataModule"] == {"train_sampler": {"epoch": 2}}
    dm.load_state_dict(checkpoint["SegmentationDataModule"])
    assert dm.train_sampler.epoch == 2
    newer = {"BratsDataModule": {"train_sampler": {"epoch": 2}}, "SegmentationDataModule": {"train_sampler": {"epoch": 5}}}
    adopt_legacy_state(newer, dm)
    assert newer["SegmentationDataModule"] == {"train_sampler": {"epoch": 5}}
    with pytest.warns(FutureWarning):
        old = BratsDataModule(**{k: v for k, v in hydra.utils.instantiate(cfg.data, _partial_=True).keywords.items()})
    untouched = {"BratsDataModule": {"train_sampler": {"epoch": 2}}}
    adopt_legacy_state(untouched, old)  # the old class reads its own key
    assert list(untouched) == ["BratsDataModule"]
