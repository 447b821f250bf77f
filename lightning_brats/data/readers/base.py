"""What every case reader shares: the :class:`CaseReader` Protocol, the found-case records and
the NIfTI helpers.

A reader turns a dataset folder into cases: :meth:`CaseReader.find_cases` lists them (and, for
``check-data``, describes the problems it finds instead of raising), :meth:`CaseReader.load_case`
reads one into memory on its original grid, and :meth:`CaseReader.describe` says in one line
what layout the reader expects, for error messages. A reader is configured by file names only
(suffixes, folders, extensions), so another release with other file names is a config change.
The registry that ``data.layout.reader`` names is in :mod:`lightning_brats.data.readers`.
(nnU-Net v2 puts its image readers behind one abstract base and a registry in the same way,
``nnunetv2/imageio/``; ours read dataset layouts rather than file formats.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import nibabel as nib
import numpy as np

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset file or folder is unusable; the message names the path and the problem."""


@runtime_checkable
class CaseSource(Protocol):
    """What a reader's ``find_cases`` returns for one case: where it is read from.

    Attributes:
        case_id: the case identifier, e.g. ``BraTS20_Training_001``.
    """

    case_id: str

    @property
    def labelled(self) -> bool:
        """Whether the case has a label map (training and evaluation need one)."""
        ...

    @property
    def label_source(self) -> Path | None:
        """The file or folder the label map is read from (for messages), ``None`` if unlabelled."""
        ...

    def sources(self) -> list[Path]:
        """Every file the case is read from (each once), e.g. to notice a changed source."""
        ...

    def load(
        self, modalities: Sequence[str], labels: Mapping[str, int] | None = None, read_label: bool = True
    ) -> LoadedCase:
        """Read the case into memory (see :meth:`CaseReader.load_case`)."""
        ...


@runtime_checkable
class CaseReader(Protocol):
    """One dataset layout on disk: find its cases, load one, describe what it expects.

    Attributes:
        name: the reader's name in the registry, as ``data.layout.reader`` gives it.
        sampling: the ``data.sampling`` modes its volumes support (``("2d", "3d")``, or
            ``("2d",)`` where the slice spacing is unknown).
        modalities: the modality names it can deliver (the keys of its file-name map).
    """

    name: ClassVar[str]
    sampling: tuple[str, ...]

    @property
    def modalities(self) -> list[str]:
        """The modality names this layout can deliver."""
        ...

    def describe(self) -> str:
        """A one-line description of the expected layout, for error messages."""
        ...

    def find_cases(self, root: str | Path, problems: list[str] | None = None) -> list[CaseSource]:
        """Every case under ``root``, sorted by case ID.

        Args:
            root: the dataset folder.
            problems: if given, a case the reader cannot use (a missing file, a repeated ID) is
                described here, naming its files, and left out instead of raising.

        Raises:
            DataError: the root does not exist or holds no case, or (without ``problems``) a
                case is unusable; the message names the path and :meth:`describe`.
        """
        ...

    def load_case(
        self,
        files: CaseSource,
        modalities: Sequence[str],
        labels: Mapping[str, int] | None = None,
        read_label: bool = True,
    ) -> LoadedCase:
        """Load a found case: ``image (C, X, Y, Z)`` float32 in ``modalities`` order, and its label.

        Args:
            files: a case from :meth:`find_cases`.
            modalities: modality names stacked as channels, e.g. ``["flair", "t1", "t1ce", "t2"]``.
            labels: the dataset's label map (name -> code); other values than these and 0 are errors.
            read_label: ``False`` skips the label map even when the case has one (prediction).

        Raises:
            DataError: a file is unreadable or does not match the others; the message names it.
        """
        ...


class CaseLoading:
    """The :meth:`CaseReader.load_case` every reader shares: a found case knows how to load itself
    (:meth:`CaseSource.load`: NIfTI cases through :func:`load_nifti_case`, LGG slices through theirs)."""

    def load_case(
        self,
        files: CaseSource,
        modalities: Sequence[str],
        labels: Mapping[str, int] | None = None,
        read_label: bool = True,
    ) -> LoadedCase:
        """Load a found case: ``image (C, *spatial)`` float32 in ``modalities`` order (``(C, X, Y, Z)`` for
        volumes, ``(C, H, W, S)`` for slice stacks), and its label map (see :meth:`CaseReader.load_case`).

        Raises:
            DataError: a file is unreadable or does not match the others; the message names it.
        """
        return files.load(modalities, labels, read_label)


@dataclass
class LoadedCase:
    """One case in memory, on its original grid.

    Attributes:
        case_id: the case identifier.
        image: ``(C, X, Y, Z)`` float32, channels in the requested modality order.
        label: ``(X, Y, Z)`` uint8 label map with the release's codes, or ``None``.
        affine: ``(4, 4)`` voxel-to-world affine of the first modality (mm).
        spacing: ``(3,)`` voxel size in mm.
        files: the files read.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: np.ndarray
    files: CaseSource = field(repr=False, default=None)


@dataclass(frozen=True)
class CaseFiles:
    """A case stored as NIfTI files: one per modality (BraTS), or one 4D file for all (MSD).

    Attributes:
        case_id: the case identifier, e.g. ``BraTS20_Training_001``.
        images: modality name -> NIfTI path, in the layout's modality order.
        label: path of the label map, or ``None`` for an unlabelled case.
        channels: modality name -> index on the 4th axis, when modalities share one 4D file
            (MSD); ``None`` when each modality is its own 3D file.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None = None
    channels: dict[str, int] | None = None

    @property
    def labelled(self) -> bool:
        """Whether the case has a label file."""
        return self.label is not None

    @property
    def label_source(self) -> Path | None:
        """The label file, or ``None``."""
        return self.label

    def sources(self) -> list[Path]:
        """Every file the case is read from (each once), images first, e.g. to notice a changed source."""
        return list(dict.fromkeys([*self.images.values(), *([self.label] if self.label else [])]))

    def load(
        self, modalities: Sequence[str], labels: Mapping[str, int] | None = None, read_label: bool = True
    ) -> LoadedCase:
        """Read the case (see :func:`load_nifti_case`)."""
        return load_nifti_case(self, modalities, labels, read_label)


def printable(path: str | os.PathLike) -> str:
    """``path`` as text that can always be printed: the path itself when it is valid UTF-8, else the
    ``repr`` of its bytes (``b'/data/Brats18_x_t1\\xff.nii.gz'``), which shows the offending byte.

    Python decodes file names that are not valid UTF-8 with ``surrogateescape`` (PEP 383); such a
    ``str`` cannot be written to a UTF-8 stream or file without ``UnicodeEncodeError``.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return repr(os.fsencode(text))
    return text


def walk(root: Path, problems: list[str] | None = None) -> list[Path]:
    """Every file and folder under ``root``, sorted, following symlinked folders (datasets are often
    linked together on clusters), skipping hidden ones (e.g. half-written temporary files). A folder
    reached again through a symlink (a loop) is read once, with a warning naming it. A file or folder
    whose name is not valid UTF-8 is skipped with a warning naming its bytes (see :func:`printable`):
    such a name cannot be printed to a UTF-8 log or become a case ID that CSV files and W&B can
    hold; a case it belonged to then lacks that file, which the reader reports.

    Args:
        root: the dataset folder.
        problems: if given (``check-data``), an unreadable folder or a name that is not UTF-8 is
            described here (instead of raising or warning) and skipped.

    Returns:
        paths under ``root`` (files and folders), sorted.

    Raises:
        DataError: (without ``problems``) a folder under ``root`` (or ``root``) cannot be listed or
            entered, e.g. no read permission; the message names it.
    """

    def unreadable(folder: str, reason: str) -> None:
        report_problem(f"{printable(folder)}: cannot read this folder ({reason}), so the cases in it cannot be "
                       "found; give the user running this read and execute permission (chmod -R u+rX or a+rX)", problems)

    found, visited = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=lambda e: unreadable(e.filename, e.strerror)):
        real = os.path.realpath(folder)
        if real in visited:  # a symlink loop (or a second link to a folder already walked): once is enough
            log.warning(f"{folder}: links back to {real}, already read under {root}; not read again")
            dirs[:] = []
            continue
        visited.add(real)
        if not os.access(folder, os.X_OK):  # listed, but its files cannot be opened or even stat'ed
            unreadable(folder, "no execute (search) permission")
            dirs[:] = []
            continue
        for name in [*dirs, *files]:
            if not name.startswith(".") and printable(name) != name:  # hidden names are skipped anyway
                message = (f"{printable(Path(folder) / name)}: name is not valid UTF-8, not read; rename it "
                           "(e.g. convmv -f latin1 -t utf8 --notest)")
                if problems is not None:
                    problems.append(message)
                else:
                    log.warning(message)
        dirs[:] = [d for d in dirs if not d.startswith(".") and printable(d) == d]
        found.extend(Path(folder) / n for n in [*dirs, *files] if not n.startswith(".") and printable(n) == n)
    return sorted(found)


def report_problem(problem: str, problems: list[str] | None) -> None:
    """Collect ``problem`` into ``problems`` (``check-data``), or raise it when not collecting.

    Raises:
        DataError: ``problems`` is ``None``.
    """
    if problems is None:
        raise DataError(problem)
    problems.append(problem)


def check_root(root: str | Path, reader: CaseReader) -> Path:
    """``root`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: ``root`` is not a folder (the message names it and ``reader.describe()``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder; expected {reader.describe()}")
    return root


def read_nifti(path: Path, ndim: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one NIfTI file. Returns ``(array (X, Y, Z[, C]), affine (4, 4), spacing (3,) mm)``.

    Raises:
        DataError: the file is corrupt or truncated, or does not have ``ndim`` dimensions.
    """
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt or truncated files
        raise DataError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim != ndim:
        what = "a 3D volume" if ndim == 3 else f"a {ndim}D stack of modalities"
        raise DataError(f"{path}: expected {what}, found shape {data.shape}")
    return data, img.affine, np.asarray(img.header.get_zooms()[:3], dtype=np.float64)


def check_label_values(path: Path, data: np.ndarray, labels: Mapping[str, int] | None) -> None:
    """Raise :class:`DataError` naming ``path`` when ``data`` holds values outside 0 and ``labels``."""
    if labels is None:
        return
    allowed = {0, *map(int, labels.values())}
    unknown = sorted(set(np.unique(data).tolist()) - allowed)
    if unknown:
        raise DataError(f"{path}: unknown label values {unknown}; the dataset's label map is {dict(labels)}")


def check_same_grid(path, shape, affine, ref_path, ref_shape, ref_affine) -> None:
    """Raise :class:`DataError` naming ``path`` and ``ref_path`` when the shapes differ or the
    ``(4, 4)`` affines differ by more than 1e-3 (mm)."""
    if shape != ref_shape:
        raise DataError(f"{path}: shape {shape} differs from {ref_path} {ref_shape}")
    if not np.allclose(affine, ref_affine, atol=1e-3):
        raise DataError(f"{path}: affine differs from {ref_path}:\n{affine}\nvs\n{ref_affine}")


def load_nifti_case(
    files: CaseFiles, modalities: Sequence[str], labels: Mapping[str, int] | None = None, read_label: bool = True
) -> LoadedCase:
    """Load a NIfTI case's modalities (in ``modalities`` order) and its label map.

    Args:
        files: the case's files, from a reader's ``find_cases`` or given explicitly.
        modalities: the modality names to stack as channels, e.g. ``["flair", "t1", "t1ce", "t2"]``.
        labels: the dataset's label map (name -> code); label values outside it and 0 are errors.
        read_label: ``False`` skips the label map even when the case has one (prediction).

    Returns:
        a :class:`LoadedCase` with ``image`` of shape ``(C, X, Y, Z)``.

    Raises:
        DataError: a file is corrupt or not 3D (4D for a stack); a modality is not in the case;
            shapes or affines differ between files; NaN or Inf voxels; unknown label values.
    """
    arrays = []
    ref_path = ref_affine = ref_spacing = None
    stacks: dict[Path, tuple] = {}  # a 4D file is read once for all its channels
    for modality in modalities:
        if modality not in files.images:
            raise DataError(f"case {files.case_id}: modality {modality!r} not in {sorted(files.images)}")
        path = files.images[modality]
        if files.channels is None:
            data, affine, spacing = read_nifti(path)
        else:
            if path not in stacks:
                stacks[path] = read_nifti(path, ndim=4)
            stack, affine, spacing = stacks[path]
            if files.channels[modality] >= stack.shape[3]:
                raise DataError(f"{path}: no channel {files.channels[modality]} for {modality!r} in shape {stack.shape}")
            data = stack[..., files.channels[modality]]
        if ref_path is None:
            ref_path, ref_affine, ref_spacing, ref_shape = path, affine, spacing, data.shape
        check_same_grid(path, data.shape, affine, ref_path, ref_shape, ref_affine)
        data = data.astype(np.float32)
        if not np.isfinite(data).all():
            raise DataError(f"{path}: contains NaN or Inf voxels")
        if not data.any():  # usable (z-scoring leaves it 0), but a missing sequence the network never saw so
            log.warning(f"{path}: modality {modality!r} of case {files.case_id} is all zero")
        arrays.append(data)
    label = None
    if files.label is not None and read_label:
        data, affine, _ = read_nifti(files.label)
        check_same_grid(files.label, data.shape, affine, ref_path, ref_shape, ref_affine)
        check_label_values(files.label, data, labels)
        label = data.astype(np.uint8)
    return LoadedCase(files.case_id, np.stack(arrays), label, ref_affine, ref_spacing, files)
