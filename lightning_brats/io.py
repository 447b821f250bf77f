"""Files written whole or not at all, CSV tables, and the job folders of a multirun.

Enters: a path and a writer (``atomic_save``), rows (``write_csv``), a folder (``find_job_dirs``).
Leaves: files on disk that no reader sees half-written. The bottom of the package: it imports
nothing from ``lightning_brats``, so every stage (data cache, checkpoints, predictions, metrics
tables, the CLIs) can use it without an import that runs back up.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def atomic_save(path: Path, write) -> None:
    """Write a file through a temporary name and rename it, so no reader sees half a file.

    The temporary file is hidden (a leading dot, so dataset readers skip it) and keeps the
    file's extension (nibabel picks the format from it, e.g. ``.nii.gz``): ``.tmp-<pid>-<name>``
    beside ``path``. It is removed when writing fails; one left by a killed process is removed
    by the next run (:func:`remove_stale_temporaries`). Used for the cache, predictions and CSVs.

    Raises:
        OSError: the disk is full, the folder is unwritable or missing (same errno and subclass as
            the original error, e.g. ``FileNotFoundError``); the message names ``path``, whose
            previous content, if any, is untouched.
    """
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


#: Names of the temporary files of atomic writes, with the writer's process id: ``.tmp-<pid>-<name>``
#: (:func:`atomic_save`) and ``.<name>.tmp-<pid>`` (checkpoints, ``lightning_brats.training.checkpoints``).
TEMPORARY_NAMES = (re.compile(r"^\.tmp-(\d+)-.+$"), re.compile(r"^\..+\.tmp-(\d+)$"))


def _pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this machine (``kill(pid, 0)``)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, log=None, min_age_s: float = 300.0) -> list[Path]:
    """Remove temporary files of atomic writes (see :data:`TEMPORARY_NAMES`) left by killed processes.

    A file is removed only when the process id in its name is not alive on this machine **and** the
    file has not been modified for ``min_age_s`` seconds: on a folder shared between nodes (NFS,
    Lustre) a process id dead here may be a live writer on another node, whose file is fresh. Files
    of this process and of live processes are kept. The folder itself is not descended into.

    Args:
        folder: a run's ``checkpoints/``, a prediction or evaluation output folder, a cache folder;
            a missing folder is no error.
        log: called with one line naming the removed files (e.g. ``logging.Logger.info``).
        min_age_s: seconds since the last modification before a dead writer's file is removed.

    Returns:
        the removed files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for path in sorted(folder.iterdir()):
        match = next((m for m in (p.match(path.name) for p in TEMPORARY_NAMES) if m), None)
        if match is None or not path.is_file():
            continue
        pid = int(match.group(1))
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:  # renamed or removed meanwhile by its writer
            continue
        if pid == os.getpid() or _pid_alive(pid) or age < min_age_s:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    if removed and log is not None:
        log(f"Removed {len(removed)} temporary file(s) left in {folder} by killed processes: {[p.name for p in removed]}")
    return removed


def write_csv(
    path: Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int | None = 6, nan: str = "nan"
) -> None:
    """Write rows as CSV atomically: the project's one CSV writer.

    Args:
        path: the file (its folder must exist).
        rows: one mapping per row.
        columns: the header, in order (default: the first row's keys).
        digits: significant digits of floats; ``None`` writes them in full (``repr``).
        nan: the text of a NaN float (``"nan"``; ``""`` leaves the cell empty).
    """
    def cell(value):
        if not isinstance(value, float):
            return value
        if np.isnan(value):
            return nan
        return repr(value) if digits is None else f"{value:.{digits}g}"

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns if columns is not None else rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: cell(v) for k, v in row.items()})
    atomic_save(path, lambda p: p.write_text(buffer.getvalue()))


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def no_job_folder(root: Path) -> str:
    """The message for a folder that holds no job of a multirun (summarize, and ``predict.py run_dir=``)."""
    return (f"{root} holds no job folder (none has .hydra/overrides.yaml); pass the folder of a multirun "
            "(python train.py -m ...), such as logs/train/multiruns/<date>_<time>")


def find_job_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` holding ``.hydra/overrides.yaml``, in natural order (2 before 10)."""
    found = {p.parent.parent for p in root.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    found.discard(root)
    return sorted(found, key=lambda p: _natural(str(p.relative_to(root))))
