"""Preprocessing, done once per case and cached: crop, normalise, resample.

Follows nnU-Net's order (Isensee et al., Nature Methods 2021): crop to the non-zero
bounding box of the modalities, z-score each modality inside the brain (non-zero) mask,
then optionally resample to a target spacing. Each case is cached as ``.npy`` arrays
(read back with memory mapping) and a JSON record holding what is needed to put a
prediction back on the original grid (:func:`restore_to_original`).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout
from rich.progress import Progress

from lightning_brats.data.normalization import CROPS, NORMALIZATIONS, minmax_in_mask, zscore_in_mask  # noqa: F401  (old path)
from lightning_brats.data.readers import CaseSource, LoadedCase, load_case
from lightning_brats.io import TEMPORARY_NAMES, atomic_save, remove_stale_temporaries  # noqa: F401  (moved; old path)

if TYPE_CHECKING:  # annotations only
    from lightning_brats.data.settings import PreprocessingSettings

#: ``data.cache_dtype`` options: the dtype of cached images.
CACHE_DTYPES = ("float32", "float16")

#: Bump when the preprocessing code changes what it writes: old caches are then not reused.
PREPROCESS_VERSION = 1


def nonzero_bbox(image: np.ndarray) -> np.ndarray:
    """Bounding box of voxels non-zero in any channel.

    Args:
        image: ``(C, X, Y, Z)``.

    Returns:
        ``(3, 2)`` int array of ``[start, stop)`` per spatial axis (voxels); the whole
        volume when every voxel is zero.
    """
    mask = np.any(image != 0, axis=0)
    box = np.zeros((3, 2), dtype=np.int64)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        box[axis] = (hits[0], hits[-1] + 1) if hits.size else (0, mask.shape[axis])
    return box


def center_box(shape: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``(3, 2)`` ``[start, stop)`` box of ``size`` voxels centred in ``shape`` (clipped to the volume)."""
    box = np.zeros((3, 2), dtype=np.int64)
    for axis, (n, s) in enumerate(zip(shape, size)):
        start = max(0, (n - int(s)) // 2)
        box[axis] = (start, min(n, start + int(s)))
    return box


def target_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape in voxels after resampling a grid of ``shape`` from ``spacing`` to ``new_spacing`` (mm)."""
    # int(): NumPy < 2 rounds its floats to floats
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))  # noqa: RUF046


def resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resize a ``(C, X, Y, Z)`` array to spatial ``shape``: trilinear (``order=1``) or nearest (``0``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if order == 1:
        out = F.interpolate(tensor, size=tuple(shape), mode="trilinear", align_corners=False)
    else:
        out = F.interpolate(tensor, size=tuple(shape), mode="nearest-exact")
    return out[0].numpy()


def preprocess_case(case: LoadedCase, settings: PreprocessingSettings) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Crop, normalise and optionally resample one case.

    Args:
        case: the case on its original grid (image ``(C, X, Y, Z)``, channels in the order of
            ``settings.modalities``).
        settings: the preprocessing (:class:`~lightning_brats.data.settings.PreprocessingSettings`:
            target ``spacing`` in mm or ``None`` to keep the original; ``normalization``, see
            :data:`NORMALIZATIONS`; ``crop`` ``"nonzero"`` (bounding box of the brain) or ``"center"``
            (a box of ``crop_size`` voxels in the middle of the original grid, as in many BraTS notebooks)).

    Raises:
        ValueError: the case has another number of channels than ``settings.modalities``.

    Returns:
        ``(image (C, x, y, z) float32, label (x, y, z) uint8 or None, record)`` where the
        record holds ``original_shape``, ``affine``, ``spacing`` (original, mm), ``crop_box``
        (``(3, 2)`` voxels), ``cropped_shape`` and ``preprocessed_spacing``.
    """
    if case.image.shape[0] != len(settings.modalities):
        raise ValueError(
            f"case {case.case_id}: {case.image.shape[0]} channels, the preprocessing expects data.modalities="
            f"{list(settings.modalities)}"
        )
    if settings.crop == "center":
        box = center_box(case.image.shape[1:], settings.crop_size)
    else:
        box = nonzero_bbox(case.image)
    window = tuple(slice(int(a), int(b)) for a, b in box)
    image = case.image[(slice(None), *window)]
    image = NORMALIZATIONS[settings.normalization](image, np.any(image != 0, axis=0))
    label = None if case.label is None else case.label[window]
    new_spacing = case.spacing if settings.spacing is None else np.asarray(settings.spacing, dtype=np.float64)
    shape = target_shape(image.shape[1:], case.spacing, new_spacing)
    if shape != image.shape[1:]:
        image = resize(image, shape, order=1)
        if label is not None:
            label = resize(label[None], shape, order=0)[0].astype(np.uint8)
    record = {
        "case_id": case.case_id,
        "original_shape": list(case.image.shape[1:]),
        "affine": np.asarray(case.affine).tolist(),
        "spacing": np.asarray(case.spacing).tolist(),
        "crop_box": box.tolist(),
        "cropped_shape": [int(b - a) for a, b in box],
        "preprocessed_shape": list(shape),
        "preprocessed_spacing": np.asarray(new_spacing).tolist(),
        "has_label": label is not None,
    }
    return image.astype(np.float32), label, record


def restore_to_original(array: np.ndarray, record: Mapping, fill: float = 0, order: int = 0) -> np.ndarray:
    """Put an array on the preprocessed grid back on the case's original grid.

    Undoes the resampling (:func:`resample_to_crop`) and the crop (:func:`uncrop`). Label maps use
    nearest neighbour (``order=0``) so their codes survive; probabilities use trilinear interpolation
    (``order=1``), as nnU-Net resamples its softmax before taking labels, which avoids blocky outlines
    after training at a coarser spacing.

    Args:
        array: ``(x, y, z)`` or ``(C, x, y, z)`` on the preprocessed grid.
        record: the case's preprocessing record (see :func:`preprocess_case`).
        fill: value outside the crop box.
        order: 0 nearest neighbour, 1 trilinear (floating-point arrays only).

    Returns:
        ``(X, Y, Z)`` or ``(C, X, Y, Z)`` on the original grid, same dtype as ``array``.
    """
    return uncrop(resample_to_crop(array, record, order), record, fill)


def resample_to_crop(array: np.ndarray, record: Mapping, order: int = 0) -> np.ndarray:
    """Undo the resampling only: ``array`` on the preprocessed grid -> the crop box of the original grid.

    Args:
        array: ``(x, y, z)`` or ``(C, x, y, z)`` on the preprocessed grid.
        record: the case's preprocessing record (``cropped_shape``: the box's size in original voxels).
        order: 0 nearest neighbour, 1 trilinear (floating-point arrays only).

    Returns:
        ``(*cropped_shape)`` or ``(C, *cropped_shape)``, same dtype (``array`` itself at the original spacing).
    """
    cropped_shape = tuple(record["cropped_shape"])
    if array.shape[-3:] == cropped_shape:
        return array
    channels = array[None] if array.ndim == 3 else array
    out = resize(channels, cropped_shape, order=order).astype(array.dtype)
    return out[0] if array.ndim == 3 else out


def uncrop(array: np.ndarray, record: Mapping, fill: float = 0) -> np.ndarray:
    """Place ``array`` (the crop box, ``(*cropped_shape)`` or ``(C, *cropped_shape)``) into the original grid,
    ``fill`` outside the box; same dtype. Reads ``record["original_shape"]`` (voxels) and ``record["crop_box"]``
    (``[[start, stop], ...]`` per axis, voxels of the original grid)."""
    squeeze = array.ndim == 3
    channels = array[None] if squeeze else array
    out = np.full((channels.shape[0], *record["original_shape"]), fill, dtype=array.dtype)
    box = record["crop_box"]
    out[(slice(None), *(slice(a, b) for a, b in box))] = channels
    return out[0] if squeeze else out


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def _npy_entry(path: Path) -> dict:
    """What the record keeps about a written ``.npy``: shape, dtype and size in bytes."""
    array = np.load(path, mmap_mode="r")
    return {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": path.stat().st_size}


def _npy_problem(path: Path, expected: Mapping | None) -> str | None:
    """Why the ``.npy`` at ``path`` is unusable, or ``None``.

    Reads only the header: the file must be as long as its header says (``header + prod(shape) *
    itemsize`` bytes) and, when the record has an entry (``expected``, see :func:`_npy_entry`), of
    the recorded shape, dtype and size. Entries written before records kept sizes are checked
    against their header alone.
    """
    if not path.exists():
        return f"{path} is missing"
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            offset = handle.tell()
    except (ValueError, OSError, EOFError) as exc:
        return f"{path} has no readable .npy header ({exc})"
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < needed:
        return f"{path} is truncated ({size} of {needed} bytes)"
    if expected is not None:
        if list(shape) != list(expected["shape"]) or str(dtype) != expected["dtype"]:
            return f"{path} holds {dtype}{list(shape)}, its record says {expected['dtype']}{expected['shape']}"
        if size != int(expected["bytes"]):
            return f"{path} has {size} bytes, its record says {expected['bytes']}"
    return None


def _source_stamp(files: CaseSource) -> dict:
    """Absolute path -> (size, mtime) of every source file: the same root given relative or
    absolute must not look like changed sources (the cache folder's name uses the resolved root)."""
    paths = files.sources()
    return {str(p.absolute()): [p.stat().st_size, int(p.stat().st_mtime)] for p in paths}


@dataclass
class CachedCase:
    """One preprocessed case read back from the cache.

    Attributes:
        case_id: the case identifier.
        image: ``(C, x, y, z)`` float32 (float16 with ``data.cache_dtype=float16``), memory-mapped.
        label: ``(x, y, z)`` uint8, memory-mapped, or ``None`` when the case has no labels.
        record: the preprocessing record (original shape, affine, spacing, crop box).
        axial: ``(z, C, x, y)``, the same voxels as ``image`` stored slice-major (memory-mapped), or
            ``None`` when the cache has no such copy (see ``PreprocessedCache(axial_copy=True)``). An
            axial slice ``image[..., z]`` is strided across the whole volume (one voxel every ``z``
            values, so every page of the file is touched); ``axial[z]`` is one contiguous block.
        axial_label: ``(z, x, y)``, ``label`` stored slice-major likewise, or ``None``.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    record: dict
    axial: np.ndarray | None = None
    axial_label: np.ndarray | None = None


class PreprocessedCache:
    """A folder of preprocessed cases keyed by a fingerprint of every setting that changes them.

    The folder is ``<cache_dir>/<name>-<fingerprint>/`` with, per case,
    ``<case>_image.npy``, ``<case>_label.npy`` and ``<case>.json`` (written last; a case
    whose record is missing or whose source files changed is redone). Each file is
    written atomically, so an interrupted run never leaves a half-written case behind.
    The record keeps each array's shape, dtype and size: an array file damaged later
    (truncated, replaced) is found by :meth:`problem` and rebuilt, with a message. One process
    at a time works on a cache folder (a ``filelock`` lock on ``<folder>/.lock``, released
    by the OS when its holder dies); others wait for it and then reuse what it wrote.

    Args:
        cache_dir: parent folder of all caches.
        name: a readable prefix for the folder (e.g. the data root's name).
        preprocessing: the modalities stacked as channels and the preprocessing
            (:class:`~lightning_brats.data.settings.PreprocessingSettings`, see :func:`preprocess_case`).
        labels: the release's label map (name -> code), checked while reading.
        source: what identifies the data (e.g. root folder and layout); part of the fingerprint.
        dtype: the cached images' dtype, ``"float32"`` or ``"float16"`` (half the size on disk and in the
            page cache; z-scored intensities keep about 3 significant digits). A storage format, not a
            preprocessing setting (prediction preprocesses in float32): a float16 cache has its own
            fingerprint, float32 keeps the fingerprint caches had before this option.
        axial_copy: also keep ``<case>_image_axial.npy`` and ``<case>_label_axial.npy``, the image and
            label stored slice-major (``(z, C, x, y)``, ``(z, x, y)``), for 2D training: cutting an axial slice from it reads one contiguous block instead of
            one voxel per ``z`` values of the whole volume (6x less CPU per 224^2 slice of a
            1 mm BraTS case, experiments/benchmarks/README.md). It doubles the image's disk and
            page-cache size, so 3D training leaves it off. A storage option, not part of the
            fingerprint: entries written without the copy (older caches, 3D runs) stay valid and
            get it added from their cached image, without preprocessing them again.

    The fingerprint is the SHA-256 of the JSON of :attr:`settings`: :data:`PREPROCESS_VERSION`,
    the preprocessing settings, ``labels`` and ``source`` (and ``dtype`` unless float32).

    Raises:
        ValueError: an unknown ``dtype``.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        name: str,
        preprocessing: PreprocessingSettings,
        labels: Mapping[str, int] | None,
        source: Mapping | None = None,
        dtype: str = "float32",
        axial_copy: bool = False,
    ) -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"data.cache_dtype={dtype!r}: expected one of {list(CACHE_DTYPES)}")
        self.dtype = dtype
        self.axial_copy = axial_copy
        self.preprocessing = preprocessing
        self.modalities = list(preprocessing.modalities)
        self.labels = None if labels is None else dict(labels)
        record = preprocessing.as_record()
        self.settings = {
            "version": PREPROCESS_VERSION,
            "modalities": record.pop("modalities"),
            "labels": self.labels,
            "spacing": record.pop("spacing"),
            **record,
            **(source or {}),
        }
        if dtype != "float32":  # float32 was the only format before: its caches keep their fingerprint
            self.settings["dtype"] = dtype
        blob = json.dumps(self.settings, sort_keys=True, default=str).encode()
        self.fingerprint = hashlib.sha256(blob).hexdigest()[:12]
        self.path = Path(cache_dir) / f"{name}-{self.fingerprint}"

    def _files(self, case_id: str) -> tuple[Path, Path, Path]:
        return (self.path / f"{case_id}_image.npy", self.path / f"{case_id}_label.npy", self.path / f"{case_id}.json")

    def _axial_files(self, case_id: str) -> dict[str, Path]:
        """Record key -> file of the slice-major copies (image, label)."""
        return {"image_axial": self.path / f"{case_id}_image_axial.npy", "label_axial": self.path / f"{case_id}_label_axial.npy"}

    def _axial_problem(self, case_id: str) -> str | None:
        """Why a usable case's slice-major copies must be (re)written, or ``None`` (also when none are wanted)."""
        if not self.axial_copy:
            return None
        stored = json.loads(self._files(case_id)[2].read_text())
        arrays = stored.get("arrays", {})
        for key, path in self._axial_files(case_id).items():
            if key == "label_axial" and not stored.get("has_label"):
                continue
            if key not in arrays:
                return "no slice-major copy"
            problem = _npy_problem(path, arrays[key])
            if problem:
                return problem
        return None

    def _write_axial(self, case_id: str) -> None:
        """Write the slice-major copies of a cached case (image ``(z, C, x, y)``, label ``(z, x, y)``) from its
        cached arrays, and add them to its record (rewritten last, atomically)."""
        image_path, label_path, record_path = self._files(case_id)
        record = json.loads(record_path.read_text())
        sources = {"image_axial": image_path, "label_axial": label_path if record.get("has_label") else None}
        for key, path in self._axial_files(case_id).items():
            if sources[key] is None:
                continue
            array = np.load(sources[key], mmap_mode="r")
            atomic_save(path, lambda p, a=array: _save_npy(p, np.ascontiguousarray(np.moveaxis(a, -1, 0))))
            record["arrays"][key] = _npy_entry(path)
        atomic_save(record_path, lambda p: p.write_text(json.dumps(record, indent=1)))

    def is_cached(self, files: CaseSource) -> bool:
        """Whether the case is complete and whole in the cache and its source files are unchanged."""
        return self.problem(files) is None

    def problem(self, files: CaseSource) -> str | None:
        """Why the case must be (re)built, or ``None`` when its cache entry is usable.

        ``"not cached"`` for a case never written or whose record is missing (an interrupted
        write); otherwise a sentence naming the damaged file: an unreadable record, changed
        sources, a missing array, or an array file whose size or shape disagrees with its
        ``.npy`` header and the record (truncated or replaced after it was written).
        """
        image, label, record = self._files(files.case_id)
        if not record.exists():
            return "not cached"
        try:
            stored = json.loads(record.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return f"{record} is unreadable ({exc})"
        if stored.get("source") != _source_stamp(files):
            return "not cached"  # the sources changed: a new version of the case, not damage
        arrays = stored.get("arrays", {})
        for name, path in (("image", image), ("label", label)):
            if name == "label" and not stored.get("has_label"):
                continue
            problem = _npy_problem(path, arrays.get(name))
            if problem:
                return problem
        return None

    def ensure(self, cases: Sequence[CaseSource], log=print, workers: int = 1) -> None:
        """Preprocess every case not yet cached, with a progress bar and a summary line.

        Runs while holding the cache folder's lock: a second process started on the same
        cache waits (saying so), then finds the cases written and reuses them. Damaged entries
        (see :meth:`problem`) are rebuilt and named in ``log``.

        Args:
            workers: processes working on cases in parallel (``spawn``ed, one torch thread each);
                1 works in this process.

        Raises:
            DataError: a case cannot be read (the message names the file); cases already
                cached, by this call or earlier ones, are left intact.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log(f"Waiting for another process preprocessing into {self.path} (lock {lock.lock_file})")
            lock.acquire()
        try:
            self._ensure_locked(cases, log, workers)
        finally:
            lock.release()

    def _ensure_locked(self, cases: Sequence[CaseSource], log, workers: int) -> None:
        """:meth:`ensure` while holding the cache's lock."""
        remove_stale_temporaries(self.path, log)
        settings_file = self.path / "settings.json"
        if not settings_file.exists():
            atomic_save(settings_file, lambda p: p.write_text(json.dumps(self.settings, indent=2, default=str)))
        todo, axial_todo = [], []
        for case in cases:
            problem = self.problem(case)
            if problem is not None:
                todo.append(case)
                if problem != "not cached":
                    log(f"Cache entry of case {case.case_id} is damaged: {problem}; rebuilding it")
            elif self._axial_problem(case.case_id) is not None:
                axial_todo.append(case.case_id)
        if axial_todo:
            log(f"Adding the slice-major copy (2D sampling reads slices from it; as large as the images) to "
                f"{len(axial_todo)} cached cases in {self.path}")
        for case_id in axial_todo:  # entries written without the copy (or with a damaged one)
            self._write_axial(case_id)
        if axial_todo:
            log(f"Added the slice-major copy to {len(axial_todo)} cached cases in {self.path}")
        if not todo:
            log(f"Preprocessed cache {self.path}: all {len(cases)} cases present, reused")
            return
        start = time.perf_counter()
        workers = max(1, min(workers, len(todo)))
        with Progress(transient=False) as progress:
            task = progress.add_task(f"Preprocessing {len(todo)} cases ({workers} workers)", total=len(todo))
            if workers == 1:
                for files in todo:
                    self._write(files)
                    progress.advance(task)
            else:
                context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
                with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                    futures = [pool.submit(self._write, files) for files in todo]
                    try:
                        for future in as_completed(futures):
                            future.result()
                            progress.advance(task)
                    except BaseException:
                        for future in futures:
                            future.cancel()
                        raise
        log(
            f"Preprocessed {len(todo)} cases in {time.perf_counter() - start:.1f} s with {workers} workers into "
            f"{self.path} ({len(cases)} cases cached, {sum(f.stat().st_size for f in self.path.iterdir()) / 2**20:.0f} MiB)"
        )

    def _write(self, files: CaseSource) -> None:
        case = load_case(files, self.modalities, self.labels)
        image, label, record = preprocess_case(case, self.preprocessing)
        record["source"] = _source_stamp(files)
        image_path, label_path, record_path = self._files(files.case_id)
        record_path.unlink(missing_ok=True)  # the record goes last: until then the entry reads as not cached
        atomic_save(image_path, lambda p: _save_npy(p, image.astype(self.dtype, copy=False)))
        record["arrays"] = {"image": _npy_entry(image_path)}
        if label is not None:
            atomic_save(label_path, lambda p: _save_npy(p, label))
            record["arrays"]["label"] = _npy_entry(label_path)
        atomic_save(record_path, lambda p: p.write_text(json.dumps(record, indent=1)))
        if self.axial_copy:
            self._write_axial(files.case_id)

    def load(self, case_id: str) -> CachedCase:
        """Read one cached case with memory mapping (with its slice-major copy when the record lists one)."""
        image_path, label_path, record_path = self._files(case_id)
        record = json.loads(record_path.read_text())
        label = np.load(label_path, mmap_mode="r") if record["has_label"] else None
        arrays = record.get("arrays", {})
        axial = {k: np.load(p, mmap_mode="r") if k in arrays else None for k, p in self._axial_files(case_id).items()}
        return CachedCase(case_id, np.load(image_path, mmap_mode="r"), label, record, axial["image_axial"], axial["label_axial"])
