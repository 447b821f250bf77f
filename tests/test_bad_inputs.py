"""Bad inputs and bad configs tried systematically (issue 13): each broken variant of a small phantom
dataset goes through what ``check-data``, ``train.py`` (its preprocessing), ``eval.py`` and ``predict.py``
run; each must stop with one message naming the file and the problem, and leave outputs written
before intact. Also: a full disk while writing the cache, predictions and ``metrics.csv``; temporary
files of killed writers removed by the next run; two ``predict.py`` runs on one output folder."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import hydra
import nibabel as nib
import numpy as np
import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from lightning_brats.data.readers import DataError
from tests import unprivileged
from tests.conftest import BRATS20_LAYOUT, REPO, compose_config, compose_tool_config

MODALITIES = ["flair", "t1", "t1ce", "t2"]
CASE = "BraTS20_Training_001"  # the case every variant breaks
OTHER = "BraTS20_Training_002"  # stays good
#: data overrides for the small phantoms: a patch that fits, preprocessing in this process
SMALL = ["data.patch_size=[16,16,16]", "data.preprocess_workers=1"]


@pytest.fixture(scope="module")
def good_root(tmp_path_factory) -> Path:
    """Two phantom cases of 24 x 24 x 16 voxels in the BraTS 2020 layout (written once per module)."""
    from lightning_brats.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("good")
    write_phantom_dataset(root, num_cases=2, shape=(24, 24, 16))
    return root


def _file(root: Path, suffix: str, case: str = CASE) -> Path:
    return root / case / f"{case}_{suffix}.nii.gz"


def _rewrite(path: Path, array: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    """Replace a NIfTI file by ``array`` (default: its own data) with ``affine`` (default: its own)."""
    image = nib.load(path)
    data = np.asarray(image.dataobj) if array is None else array
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def _shift_affine(path: Path) -> None:
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 0.01  # 10 um: more than the 1e-3 mm the readers accept
    _rewrite(path, affine=affine)


def _label_code_7(path: Path) -> None:
    label = np.asarray(nib.load(path).dataobj).copy()
    label[0, 0, 0] = 7
    _rewrite(path, label.astype(np.uint8))


def _nan_voxel(path: Path) -> None:
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    data[3, 3, 3] = np.nan
    _rewrite(path, data)


def _non_utf8_name(path: Path) -> None:
    """Rename ``<case>_t1.nii.gz`` to ``<case>_t1\\xff.nii.gz``: a byte that is not UTF-8 (a Latin-1 name)."""
    os.rename(path, non_utf8(path))


def non_utf8(path: Path) -> bytes:
    """The bytes of ``path`` with ``\\xff`` before its ``.nii.gz`` (the name the variant gives the file)."""
    return os.fsencode(path)[: -len(".nii.gz")] + b"\xff.nii.gz"


#: name -> (which file of CASE to break (suffix), how, words of the expected message, message names the file).
#: Each variant is a copy of the good dataset with that one change; the expected words come from the
#: kind of damage, written here, not from the code under test.
VARIANTS = {
    "truncated_gzip": ("flair", _truncate, "cannot read NIfTI", True),
    "zero_byte_file": ("t1", lambda p: p.write_bytes(b""), "cannot read NIfTI", True),
    "wrong_magic_bytes": ("t2", lambda p: p.write_bytes(b"GIF89a" + p.read_bytes()[6:]), "cannot read NIfTI", True),
    "2d_image": ("t1ce", lambda p: _rewrite(p, np.zeros((24, 24), np.float32)), "expected a 3D volume, found shape (24, 24)", True),
    "4d_image": ("t1ce", lambda p: _rewrite(p, np.zeros((24, 24, 16, 2), np.float32)), "expected a 3D volume", True),
    "other_shape": ("t2", lambda p: _rewrite(p, np.zeros((24, 24, 15), np.float32)), "shape (24, 24, 15) differs from", True),
    "other_affine": ("t1", _shift_affine, "affine differs from", True),
    "nan_voxels": ("flair", _nan_voxel, "contains NaN or Inf voxels", True),
    "missing_modality": ("t2", lambda p: p.unlink(), "missing modality ['t2']", False),
    "label_code_7": ("seg", _label_code_7, "unknown label values [7]", True),
    # the t1 file is there under a name that is not UTF-8: not read (a warning names its bytes), so t1 is missing
    "non_utf8_file_name": ("t1", _non_utf8_name, "missing modality ['t1']", False),
}
#: Variants whose broken name is reported besides the one message: check-data lists it as a second problem,
#: the other tools warn; the words and the file's bytes as ``repr`` prints them.
NAME_PROBLEMS = {"non_utf8_file_name": "name is not valid UTF-8, not read"}


def _name_problem(name: str, path: Path) -> str:
    """The line reporting the broken name of variant ``name`` (bytes shown as ``b'...\\xff.nii.gz'``)."""
    return f"{non_utf8(path)!r}: {NAME_PROBLEMS[name]}"
#: Variants each tool meets: eval reads the label maps and the one modality it draws (t1ce, from
#: conf/display/default.yaml; a damaged flair does not stop it); predict reads the modalities, never the
#: label; check-data and train.py's preprocessing read everything.
EVAL_READS = {"2d_image", "4d_image", "label_code_7", "missing_modality"}
PREDICT_READS = set(VARIANTS) - {"label_code_7"}


def _variant(good_root: Path, name: str, folder: Path, before=None) -> tuple[Path, Path]:
    """A copy of the good dataset with variant ``name`` applied: ``(root, the broken file)``; ``before(root)``
    runs on the good copy first (an earlier run)."""
    suffix, damage, _, _ = VARIANTS[name]
    root = folder / "data"
    shutil.copytree(good_root, root)
    if before is not None:
        before(root)
    path = _file(root, suffix)
    damage(path)
    return root, path


def _expected(name: str, root: Path, path: Path) -> list[str]:
    """What the one message must contain: the file (or, for a missing file, its case folder) and the words."""
    _, _, words, names_file = VARIANTS[name]
    return [str(path) if names_file else str(path.parent), words]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- data variants, in-process: check-data, train.py's preprocessing, eval.py -------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_check_data_names_the_file_and_the_problem(name, good_root, tmp_path):
    from lightning_brats.cli.check_data import check_dataset

    root, path = _variant(good_root, name, tmp_path)
    cfg = compose_config(["data=brats20", f"data.root={root}"], tmp_path / "out")
    report = check_dataset(hydra.utils.instantiate(cfg.data))
    if name in NAME_PROBLEMS:  # listed first (found while walking the root), then what it leads to
        assert report.problems[0].startswith(_name_problem(name, path)), report.problems
        report.problems.pop(0)
    assert len(report.problems) == 1, report.problems
    assert all(part in report.problems[0] for part in _expected(name, root, path)), report.problems[0]
    assert [r["case_id"] for r in report.rows] == [OTHER]  # the good case is still read and listed


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_train_preprocessing_stops_naming_the_file_and_keeps_the_cache(name, good_root, tmp_path, caplog):
    """What train.py runs before any training (``prepare_data``: find cases, fill the cache)."""
    cfg = compose_config(["data=brats20", f"data.root={tmp_path / 'data'}", *SMALL], tmp_path / "out", tmp_path / "cache")
    datamodule = hydra.utils.instantiate(cfg.data)
    root, path = _variant(good_root, name, tmp_path, lambda r: datamodule.cache.ensure(  # an earlier run cached OTHER
        [c for c in datamodule.reader.find_cases(r) if c.case_id == OTHER], log=lambda _: None))
    before = _snapshot(datamodule.cache.path)
    with pytest.raises(DataError) as info, caplog.at_level("WARNING"):
        datamodule.prepare_data()
    message = str(info.value)
    assert all(part in message for part in _expected(name, root, path)), message
    if name in NAME_PROBLEMS:
        assert [r for r in caplog.records if r.getMessage().startswith(_name_problem(name, path))], caplog.text
    after = _snapshot(datamodule.cache.path)
    assert {k: v for k, v in after.items() if k in before} == before  # written before: byte for byte
    assert not [k for k in after if CASE in k]  # nothing of the broken case under any name
    assert not [k for k in after if ".tmp-" in k]


def _perfect_predictions(good_root: Path, folder: Path) -> Path:
    """A folder of ``<case>.nii.gz`` predictions equal to the good ground truth."""
    folder.mkdir()
    for case in (CASE, OTHER):
        shutil.copy(_file(good_root, "seg", case), folder / f"{case}.nii.gz")
    return folder


@pytest.mark.parametrize("name", sorted(EVAL_READS))
def test_eval_stops_naming_the_file_and_keeps_the_previous_metrics(name, good_root, tmp_path):
    from lightning_brats.cli.eval import evaluate

    predictions = _perfect_predictions(good_root, tmp_path / "predictions")
    out = tmp_path / "eval"
    overrides = [f"predictions={predictions}", "data=brats20", "logger=csv", "pictures=false"]
    evaluate(compose_tool_config("eval", [f"ground_truth={good_root}", *overrides], out))  # a good earlier run
    before = _snapshot(out)
    assert "metrics.csv" in before and "summary.csv" in before
    root, path = _variant(good_root, name, tmp_path)
    with pytest.raises(DataError) as info:
        evaluate(compose_tool_config("eval", [f"ground_truth={root}", *overrides], out))
    assert all(part in str(info.value) for part in _expected(name, root, path)), str(info.value)
    assert _snapshot(out) == before


def test_an_empty_data_root_is_named_by_every_reader(tmp_path):
    from lightning_brats.cli.check_data import check_dataset

    root = tmp_path / "empty"
    root.mkdir()
    cfg = compose_config(["data=brats20", f"data.root={root}"], tmp_path / "out", tmp_path / "cache")
    datamodule = hydra.utils.instantiate(cfg.data)
    expected = f"no cases found under {root}"
    assert [p for p in check_dataset(datamodule).problems if expected in p]
    for step in (datamodule.check_root, datamodule.prepare_data):  # train.py checks the root before building the model
        with pytest.raises(DataError, match=re.escape(expected)):
            step()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.npy"))


def test_a_symlink_loop_under_the_root_is_read_once_with_a_warning(good_root, tmp_path, caplog):
    from lightning_brats.data.readers import make_reader

    root = tmp_path / "looped"
    shutil.copytree(good_root, root)
    (root / CASE / "loop").symlink_to(root, target_is_directory=True)  # root/<case>/loop -> root
    reader = make_reader({"reader": "brats_folders", "modality_suffixes": {m: f"_{m}" for m in ("flair", "t1", "t1ce", "t2")}})
    with caplog.at_level("WARNING"):
        cases = reader.find_cases(root)
    assert sorted(c.case_id for c in cases) == sorted([CASE, OTHER])  # each once, no endless walk
    assert any(str(root / CASE / "loop") in r.getMessage() and "links back" in r.getMessage() for r in caplog.records)


def _non_utf8_case_folder(good_root: Path, tmp_path: Path) -> tuple[Path, bytes]:
    """A copy of the good dataset whose CASE folder is renamed ``BraTS20_Training_\\xff01``: ``(root, its bytes)``."""
    root = tmp_path / "data"
    shutil.copytree(good_root, root)
    folder = os.fsencode(root) + b"/BraTS20_Training_\xff01"
    os.rename(root / CASE, folder)
    return root, folder


def test_a_case_folder_with_a_non_utf8_name_is_named_and_not_read(good_root, tmp_path, caplog):
    from lightning_brats.cli.check_data import check_dataset

    root, folder = _non_utf8_case_folder(good_root, tmp_path)
    expected = f"{folder!r}: name is not valid UTF-8, not read"  # b'/.../BraTS20_Training_\\xff01': ...
    cfg = compose_config(["data=brats20", f"data.root={root}"], tmp_path / "out")
    report = check_dataset(hydra.utils.instantiate(cfg.data))
    assert [r["case_id"] for r in report.rows] == [OTHER]
    assert len(report.problems) == 1 and report.problems[0].startswith(expected), report.problems
    with caplog.at_level("WARNING"):  # train.py and predict.py: a warning, the other case is read
        cases = BRATS20_LAYOUT.find_cases(root)
    assert [c.case_id for c in cases] == [OTHER]
    assert [r for r in caplog.records if r.levelname == "WARNING" and r.getMessage().startswith(expected)], caplog.text
    assert all(r.getMessage().encode("utf-8") for r in caplog.records)  # printable: no lone surrogate in any message


def test_an_all_zero_modality_is_a_warning_naming_the_file(good_root, tmp_path, caplog):
    from lightning_brats.data.readers import load_case, make_reader

    root = tmp_path / "zero"
    shutil.copytree(good_root, root)
    flair = _file(root, "flair")
    _rewrite(flair, np.zeros(nib.load(flair).shape, np.float32))
    reader = make_reader({"reader": "brats_folders", "modality_suffixes": {m: f"_{m}" for m in ("flair", "t1", "t1ce", "t2")}})
    case = next(c for c in reader.find_cases(root) if c.case_id == CASE)
    with caplog.at_level("WARNING"):
        loaded = load_case(case, ["flair", "t1"])
    assert not loaded.image[0].any() and loaded.image[1].any()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(flair) in w and "all zero" in w for w in warned), warned


# --- configs: a message naming the key and the allowed values, before any preprocessing ---------------


def test_an_unknown_config_key_or_value_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigCompositionException, match=re.escape("Could not override 'data.nonexistent'")):
        compose_config(["data=brats20", "data.nonexistent=1"], tmp_path)
    with pytest.raises(MissingConfigException) as info:
        compose_config(["model=nonexistent"], tmp_path)
    message = str(info.value)
    assert "Could not find 'model/nonexistent'" in message
    listed = message.split("Available options in 'model':")[1].split()
    assert {"unet2d", "unet3d"} <= set(listed)  # the allowed values are listed
    with pytest.raises(MissingConfigException, match=re.escape("Could not find 'data/brats1999'")):
        compose_tool_config("eval", ["data=brats1999"], tmp_path)


@pytest.mark.parametrize(("override", "message"), [
    ("data.patch_size=[-8,64,64]", "every size must be a positive number of voxels"),
    ("data.fold=5", "data.fold=5 with data.num_folds=5"),
    ("data.num_folds=1", "expected at least 2 folds"),
    ("data.batch_size=0", "data.batch_size=0: expected at least 1"),
    ("data.foreground_sampling=tumour", "data.foreground_sampling='tumour': expected one of ['voxel', 'label', 'region']"),
    ("data.modalities=[flair,dwi]",
     "names ['dwi'], which this dataset's layout does not have; its modalities are ['flair', 't1', 't1ce', 't2']"),
])
def test_an_impossible_data_value_is_refused_when_the_datamodule_is_built(override, message, tmp_path):
    import hydra
    from hydra.errors import InstantiationException

    cfg = compose_config(["data=brats20", "data.root=/nonexistent", override], tmp_path)
    with pytest.raises(InstantiationException, match=re.escape(message)):
        hydra.utils.instantiate(cfg.data)


# --- a full disk while writing (the writer raises ENOSPC half-way) ------------------------------------


def _half_then_enospc(real_bytes: bytes, path: Path) -> None:
    with open(path, "wb") as handle:
        handle.write(real_bytes[: len(real_bytes) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")  # what write(2) raises: no file name in it


def test_a_full_disk_while_caching_keeps_the_old_entry_and_names_the_file(good_root, tmp_path, monkeypatch):
    from lightning_brats.data import preprocess

    cfg = compose_config(["data=brats20", f"data.root={good_root}", *SMALL], tmp_path / "out", tmp_path / "cache")
    datamodule = hydra.utils.instantiate(cfg.data)
    cases = datamodule.reader.find_cases(good_root)
    datamodule.cache.ensure(cases, log=lambda _: None)
    image = datamodule.cache.path / f"{CASE}_image.npy"
    label = datamodule.cache.path / f"{CASE}_label.npy"
    good_image = image.read_bytes()
    label.write_bytes(label.read_bytes()[:100])  # damaged: the next ensure rebuilds the case, over the old image

    def full_disk(path, array):
        import io

        buffer = io.BytesIO()
        np.save(buffer, array)
        _half_then_enospc(buffer.getvalue(), path)

    monkeypatch.setattr(preprocess, "_save_npy", full_disk)
    with pytest.raises(OSError) as info:
        datamodule.cache.ensure(cases, log=lambda _: None)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == f"[Errno {errno.ENOSPC}] could not write {image}: No space left on device"
    assert image.read_bytes() == good_image  # the previous file, whole
    assert not [p.name for p in datamodule.cache.path.iterdir() if ".tmp-" in p.name]
    assert not (datamodule.cache.path / f"{CASE}.json").exists()  # the entry reads as not cached: rebuilt next time
    monkeypatch.undo()
    datamodule.cache.ensure(cases, log=lambda _: None)  # with space again
    assert image.read_bytes() == good_image and datamodule.cache.is_cached(cases[0])


def test_a_full_disk_while_writing_a_prediction_keeps_the_old_one(good_root, tmp_path, monkeypatch):
    from lightning_brats.data.readers import load_case
    from lightning_brats.inference import prediction

    case = load_case(next(c for c in BRATS20_LAYOUT.find_cases(good_root) if c.case_id == CASE), MODALITIES)
    out = tmp_path / "predictions" / f"{CASE}.nii.gz"
    out.parent.mkdir()
    old = np.ones(case.image.shape[1:], np.uint8)
    prediction.write_nifti(old, case, out)
    old_bytes = out.read_bytes()
    real_save = nib.save

    def full_disk(image, filename):
        real_save(image, filename)  # the real bytes, then the disk is "full" half-way through them
        _half_then_enospc(Path(filename).read_bytes(), Path(filename))

    monkeypatch.setattr(prediction.nib, "save", full_disk)
    with pytest.raises(OSError, match=re.escape(f"could not write {out}: No space left on device")):
        prediction.write_nifti(np.zeros_like(old), case, out)
    assert out.read_bytes() == old_bytes
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_a_full_disk_while_writing_metrics_csv_keeps_the_old_one(tmp_path, monkeypatch):
    from lightning_brats.io import write_csv

    path = tmp_path / "metrics.csv"
    write_csv(path, [{"case_id": "a", "dice_wt": 0.5}])
    old = path.read_bytes()
    real_write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        _half_then_enospc(text.encode(), self)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match=re.escape(f"could not write {path}: No space left on device")):
        write_csv(path, [{"case_id": "a", "dice_wt": 0.9}, {"case_id": "b", "dice_wt": 0.8}])
    monkeypatch.setattr(Path, "write_text", real_write_text)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


# --- temporary files of killed writers -------------------------------------------------------------


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    proc = subprocess.Popen(["true"])  # not Python: the quick loop allows no Python subprocess
    proc.wait()
    return proc.pid


def _leftovers(folder: Path, dead: int, live: int) -> dict[str, Path]:
    """Temporary files as the two atomic writers name them, for a dead and a live writer, aged an hour."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {
        "dead_ckpt": f".last.ckpt.tmp-{dead}", "dead_save": f".tmp-{dead}-{CASE}.nii.gz",
        "live_ckpt": f".last.ckpt.tmp-{live}", "live_save": f".tmp-{live}-metrics.csv",
        "own": f".tmp-{os.getpid()}-summary.csv", "not_ours": ".hidden-notes.txt",
    }
    hour_ago = time.time() - 3600
    paths = {}
    for key, name in names.items():
        paths[key] = folder / name
        paths[key].write_bytes(b"partial")
        os.utime(paths[key], (hour_ago, hour_ago))
    return paths


def test_temporaries_of_dead_writers_are_removed_and_no_others(tmp_path):
    from lightning_brats.io import remove_stale_temporaries

    dead = _dead_pid()
    with subprocess.Popen(["sleep", "60"]) as live:
        try:
            paths = _leftovers(tmp_path / "run", dead, live.pid)
            fresh = tmp_path / "run" / f".tmp-{dead}-fresh.csv"  # a dead pid here, but written a moment ago:
            fresh.write_bytes(b"x")  # possibly a live writer on another node of a shared file system
            lines = []
            removed = remove_stale_temporaries(tmp_path / "run", lines.append)
        finally:
            live.kill()
    assert sorted(removed) == sorted([paths["dead_ckpt"], paths["dead_save"]])
    assert not paths["dead_ckpt"].exists() and not paths["dead_save"].exists()
    assert all(paths[k].exists() for k in ("live_ckpt", "live_save", "own", "not_ours")) and fresh.exists()
    assert len(lines) == 1 and str(tmp_path / "run") in lines[0] and paths["dead_ckpt"].name in lines[0]
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_the_next_run_cleans_the_cache_and_checkpoint_folders(good_root, tmp_path):
    from lightning_brats.data.preprocess import PreprocessedCache
    from lightning_brats.training.callbacks import AtomicCheckpoints
    from lightning_brats.training.checkpoints import AtomicCheckpointIO

    dead = _dead_pid()
    cfg = compose_config(["data=brats20", f"data.root={good_root}", *SMALL], tmp_path / "out", tmp_path / "cache")
    datamodule = hydra.utils.instantiate(cfg.data)
    cache: PreprocessedCache = datamodule.cache
    cache_left = _leftovers(cache.path, dead, os.getpid())
    cache.ensure(datamodule.reader.find_cases(good_root), log=lambda _: None)
    assert not cache_left["dead_ckpt"].exists() and not cache_left["dead_save"].exists()
    assert cache_left["live_ckpt"].exists()  # this process's "live" file stays

    old_run, new_run = tmp_path / "runs" / "a" / "checkpoints", tmp_path / "runs" / "b" / "checkpoints"
    old_left, new_left = _leftovers(old_run, dead, os.getpid()), _leftovers(new_run, dead, os.getpid())
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    trainer = SimpleNamespace(  # what setup reads of a Trainer resuming from a's last.ckpt into b
        strategy=SimpleNamespace(checkpoint_io=TorchCheckpointIO()), is_global_zero=True,
        checkpoint_callbacks=[SimpleNamespace(dirpath=str(new_run))], ckpt_path=str(old_run / "last.ckpt"))
    AtomicCheckpoints().setup(trainer, None, "fit")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    for left in (old_left, new_left):
        assert not left["dead_ckpt"].exists() and not left["dead_save"].exists()
        assert left["live_ckpt"].exists() and left["not_ours"].exists()


# --- subprocesses: the CLIs as a user runs them (slow: each starts Python, torch and Hydra) -----------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def _cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


#: How a DataError's line starts, as Python names the class (written out here, not taken from the code).
DATA_ERROR = "lightning_brats.data.readers.base.DataError"
#: (tool, variant) pairs run as real processes: one per kind of damage and tool, not the whole product.
CLI_CASES = [("check-data", "truncated_gzip"), ("check-data", "label_code_7"), ("train", "truncated_gzip"),
             ("train", "other_affine"), ("train", "missing_modality"), ("eval", "label_code_7"),
             ("predict", "other_shape"), ("predict", "zero_byte_file"), ("check-data", "non_utf8_file_name"),
             ("train", "non_utf8_file_name"), ("predict", "non_utf8_file_name")]


@pytest.mark.slow
@pytest.mark.parametrize(("tool", "name"), CLI_CASES)
def test_the_clis_stop_on_bad_data_naming_the_file(tool, name, good_root, phantom_checkpoint, tmp_path):
    root, path = _variant(good_root, name, tmp_path)
    out = tmp_path / "out"
    previous = {"train": out / "cache", "eval": out / "eval", "predict": out / "pred"}.get(tool)
    if previous is not None:  # an earlier run's output the failing run must leave as it was
        previous.mkdir(parents=True)
        (previous / f"{OTHER}.nii.gz").write_bytes(b"earlier output")
    args = {
        "check-data": ["-m", "lightning_brats.cli", "check-data", "data=brats20", f"data.root={root}"],
        "train": ["train.py", "data=brats20", f"data.root={root}", *SMALL, "logger=csv",
                  f"paths.cache_dir={out / 'cache'}", "trainer.max_epochs=1", "trainer.accelerator=cpu"],
        "eval": ["eval.py", f"ground_truth={root}", f"predictions={_perfect_predictions(good_root, tmp_path / 'predictions')}", "data=brats20",
                 f"output_dir={out / 'eval'}", "logger=csv"],
        "predict": ["predict.py", f"ckpt_path={phantom_checkpoint}", f"input={root}", f"output_dir={out / 'pred'}",
                    "inference.device=cpu"],
    }[tool]
    proc = _cli([*args, f"paths.root_dir={out}"])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    expected = _expected(name, root, path)
    if tool == "check-data":  # its problem list is 160 columns wide: rich wraps a line that a long path makes longer
        flowing = " ".join(text.split())
        assert all(" ".join(part.split()) in flowing for part in expected), text[-3000:]
    else:
        assert [line for line in text.splitlines() if all(part in line for part in expected)], text[-3000:]
    if tool != "check-data":  # the one DataError line, naming the file, and no traceback (Lightning's, nibabel's)
        assert "Traceback" not in proc.stderr and "site-packages" not in proc.stderr, proc.stderr[-3000:]
        named = [line for line in proc.stderr.splitlines() if expected[0] in line and not line.startswith("Error executing job")]
        assert len(named) == 1 and named[0].startswith(f"{DATA_ERROR}: "), proc.stderr[-3000:]
        assert named[0].startswith(f"{DATA_ERROR}: {expected[0]}") or not VARIANTS[name][3], named
        assert "HYDRA_FULL_ERROR=1" in proc.stderr  # how to see the whole traceback, as Hydra says it
    if name in NAME_PROBLEMS:  # named once by check-data's list, in a warning by the others; nothing failed to print
        flowing = " ".join(text.split())  # check-data's table is 160 columns wide: rich wraps its long lines
        assert _name_problem(name, path) in flowing, text[-3000:]
        assert "UnicodeEncodeError" not in text and "Logging error" not in text, text[-3000:]
    if previous is not None:
        assert (previous / f"{OTHER}.nii.gz").read_bytes() == b"earlier output"
        assert not [p for p in previous.rglob("*") if CASE in p.name or ".tmp-" in p.name]


@pytest.mark.slow
def test_check_data_lists_a_non_utf8_case_folder_and_prints_it(good_root, tmp_path):
    root, folder = _non_utf8_case_folder(good_root, tmp_path)
    proc = _cli(["-m", "lightning_brats.cli", "check-data", "data=brats20", f"data.root={root}",
                 f"paths.root_dir={tmp_path / 'out'}"])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert f"{folder!r}: name is not valid UTF-8, not read" in text and OTHER in proc.stdout, text[-3000:]
    assert "Traceback" not in text and "UnicodeEncodeError" not in text and "Logging error" not in text, text[-3000:]


@pytest.fixture(scope="module")
def as_nobody():
    """How to run the tools as a user for whom permissions count: uid 65534 from a world-readable copy of the
    code (and, where needed, of the interpreter; ``tests/unprivileged.py``) when this is root, else this user.
    Fails with one line where that cannot be arranged: a permission test that cannot switch users tests nothing."""
    import tempfile

    if os.geteuid() != 0:
        yield unprivileged.as_current_user()
        return
    reason = unprivileged.why_not_as_another_user()
    if reason is not None:
        pytest.fail(reason, pytrace=False)
    folder = Path(tempfile.mkdtemp(prefix="lightning-brats-as-nobody-"))
    try:
        try:
            runner = unprivileged.stage(folder)
        except unprivileged.StagingError as error:
            pytest.fail(str(error), pytrace=False)
        yield runner
    finally:
        shutil.rmtree(folder)


def test_staging_for_another_user_names_the_folder_it_cannot_enter(tmp_path):
    """Code staged under a folder others cannot enter would fail deep in the child (Permission denied on
    train.py): staging refuses first, in one line naming the folder, its mode and what to do."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    (closed / "stage").mkdir()
    with pytest.raises(unprivileged.StagingError) as error:
        unprivileged.stage(closed / "stage")
    message = str(error.value)
    assert "\n" not in message and str(closed / "stage") in message, message
    assert re.search(r" is mode 700\b", message) and "TMPDIR" in message, message
    assert not (closed / "stage" / "src").exists()  # nothing copied


@pytest.fixture
def world_readable_dir():
    """A fresh folder under the temp dir that another user can read and write (pytest's ``tmp_path`` is 0700)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="lightning-brats-perm-"))
    folder.chmod(0o777)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o777)  # let rmtree in, also when not root
    shutil.rmtree(folder)


def _shared_copy(base: Path, good_root: Path, checkpoint: Path) -> tuple[Path, Path, Path]:
    """Copy the phantom cases and the checkpoint into ``base``, readable by anyone (as a shared dataset is),
    and make a home folder anyone can write.

    Returns:
        ``(data root, checkpoint, home)``.
    """
    root = base / "data"
    shutil.copytree(good_root, root)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    copied = base / "model.ckpt"
    shutil.copy(checkpoint, copied)
    copied.chmod(0o644)
    home = base / "home"
    home.mkdir()
    home.chmod(0o777)
    return root, copied, home


def _run_unprivileged(runner: unprivileged.Runner, args: list[str], home: Path,
                      root_dir: Path) -> subprocess.CompletedProcess:
    """``python ARGS paths.root_dir=ROOT_DIR`` as ``runner`` says (uid 65534 from a copy it can read, when root)."""
    env = {**_env(), "HOME": str(home), "MPLCONFIGDIR": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    return runner.run([*args, f"paths.root_dir={root_dir}"], env=env)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["check-data", "train", "predict"])
def test_a_case_folder_without_read_permission_is_named(tool, good_root, phantom_checkpoint, world_readable_dir, as_nobody):
    """A case folder ``chmod 000``, the tools run as an unprivileged user: one message naming the folder, exit 1,
    nothing written under a final name. (Before: ``os.walk`` skipped the folder silently and the case vanished.)"""
    base = world_readable_dir
    root, checkpoint, home = _shared_copy(base, good_root, phantom_checkpoint)
    out = base / "out"
    (out / "pred").mkdir(parents=True)
    (out / "pred" / f"{OTHER}.nii.gz").write_bytes(b"earlier output")
    for path in [out, out / "pred"]:
        path.chmod(0o777)
    (root / CASE).chmod(0o000)
    args = {
        "check-data": ["-m", "lightning_brats.cli", "check-data", "data=brats20", f"data.root={root}"],
        "train": ["train.py", "data=brats20", f"data.root={root}", *SMALL, "logger=csv", "trainer.max_epochs=1",
                  "trainer.accelerator=cpu"],
        "predict": ["predict.py", f"ckpt_path={checkpoint}", f"input={root}", f"output_dir={out / 'pred'}",
                    "inference.device=cpu"],
    }[tool]
    proc = _run_unprivileged(as_nobody, args, home, out)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    expected = f"{root / CASE}: cannot read this folder (Permission denied)"
    assert [line for line in text.splitlines() if expected in line], text[-3000:]
    if tool != "check-data":
        assert f"{DATA_ERROR}: {expected}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (out / "pred" / f"{OTHER}.nii.gz").read_bytes() == b"earlier output"
    written = [p for p in out.rglob("*") if p.suffix in (".npy", ".json", ".ckpt") or p.name.endswith(".nii.gz")]
    assert written == [out / "pred" / f"{OTHER}.nii.gz"], written  # no cache entry, checkpoint or prediction


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["train", "predict"])
def test_an_unwritable_output_folder_is_named(tool, good_root, phantom_checkpoint, world_readable_dir, as_nobody):
    """The cache folder (train.py) or the output folder (predict.py) is read-only for the user running the
    tool (a real unprivileged process): one message naming the folder, exit 1, and what was there before
    stays byte for byte."""
    base = world_readable_dir
    root, checkpoint, home = _shared_copy(base, good_root, phantom_checkpoint)
    out, locked = base / "out", base / "locked"
    for path in (out, locked):
        path.mkdir()
        path.chmod(0o777)
    (locked / "earlier.txt").write_text("earlier output")
    locked.chmod(0o555)  # readable, not writable
    args = {
        "train": ["train.py", "data=brats20", f"data.root={root}", *SMALL, "logger=csv", "trainer.max_epochs=1",
                  "trainer.accelerator=cpu", f"paths.cache_dir={locked}"],
        "predict": ["predict.py", f"ckpt_path={checkpoint}", f"input={root}", f"output_dir={locked}",
                    "inference.device=cpu"],
    }[tool]
    proc = _run_unprivileged(as_nobody, args, home, out)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert str(locked) in proc.stderr and "Permission denied" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in locked.iterdir()) == ["earlier.txt"]
    assert (locked / "earlier.txt").read_text() == "earlier output"


@pytest.mark.slow
def test_hydra_full_error_shows_the_whole_traceback_of_bad_data(good_root, tmp_path):
    """``HYDRA_FULL_ERROR=1``: the original DataError with Lightning's frames and nibabel's cause."""
    root, path = _variant(good_root, "truncated_gzip", tmp_path)
    args = ["train.py", "data=brats20", f"data.root={root}", *SMALL, "logger=csv", "trainer.max_epochs=1",
            "trainer.accelerator=cpu", f"paths.root_dir={tmp_path / 'out'}"]
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env={**_env(), "HYDRA_FULL_ERROR": "1"},
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "pytorch_lightning/trainer/trainer.py" in proc.stderr and "nibabel" in proc.stderr, proc.stderr[-3000:]
    assert f"{DATA_ERROR}: {path}: cannot read NIfTI" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("override", "words"), [
    ("data.nonexistent=1", "Could not override 'data.nonexistent'"),
    ("model=nonexistent", "Could not find 'model/nonexistent'"),
])
def test_train_py_refuses_an_unknown_key_or_value_before_anything(override, words, tmp_path):
    proc = _cli(["train.py", "data=sample", override, f"paths.root_dir={tmp_path}"])
    assert proc.returncode == 1 and words in proc.stderr, proc.stderr[-2000:]
    if override.startswith("model="):
        assert "Available options in 'model'" in proc.stderr and "unet3d" in proc.stderr
    assert not any(tmp_path.rglob("*.npy")) and not (tmp_path / "data").exists()  # nothing preprocessed or generated


# --- two predict.py runs writing into one folder at once -------------------------------------------


@pytest.mark.slow
def test_two_predict_runs_into_one_folder_write_each_case_once_and_whole(phantom_checkpoint, phantom_root, tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    dead = _dead_pid()
    stale = out / f".tmp-{dead}-BraTS20_Training_001.nii.gz"  # left by a killed earlier run
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600,) * 2)
    args = [sys.executable, "predict.py", f"ckpt_path={phantom_checkpoint}", f"input={phantom_root}",
            f"output_dir={out}", "inference.device=cpu", f"paths.root_dir={tmp_path}"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    for log in logs:
        with open(log, "w") as handle:
            procs.append(subprocess.Popen(args, cwd=REPO, env=_env(), stdout=handle, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=600) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts
    cases = sorted(p.name for p in phantom_root.iterdir() if p.is_dir())
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # the stale one removed too
    # each case predicted by exactly one of the two ("<case>: 1.2 s, label voxels ..."), skipped by the other
    predicted = [re.findall(r"(BraTS20_Training_\d+): [\d.]+ s, label voxels", t) for t in texts]
    assert sorted(predicted[0] + predicted[1]) == cases, predicted
    # whole files: readable, on the input grid, and equal to a prediction made alone
    alone = tmp_path / "alone"
    proc = _cli([*args[1:4], f"output_dir={alone}", "inference.device=cpu", f"paths.root_dir={tmp_path}", "cases=[" + cases[0] + "]"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    for case in cases:
        label = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
        assert label.shape == nib.load(phantom_root / case / f"{case}_flair.nii.gz").shape
    assert np.array_equal(np.asarray(nib.load(out / f"{cases[0]}.nii.gz").dataobj),
                          np.asarray(nib.load(alone / f"{cases[0]}.nii.gz").dataobj))
