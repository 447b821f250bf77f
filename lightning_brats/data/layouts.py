"""Readers for dataset layouts on disk: find cases, load their modalities and labels.

A layout is described by configuration only (file suffixes and extensions), so another
release with other file names is a config change, not a code change. The BraTS 2018-2021
layout is ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``, found anywhere under the root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np


class DataError(ValueError):
    """A dataset file or folder is unusable; the message names the path and the problem."""


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: the case identifier, e.g. ``BraTS20_Training_001``.
        images: modality name -> NIfTI path, in the layout's modality order.
        label: path of the label map, or ``None`` for an unlabelled case.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None = None


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
    files: CaseFiles = field(repr=False, default=None)


class BratsLayout:
    """A BraTS-style layout: one folder per case, one NIfTI file per modality.

    Args:
        modality_suffixes: modality name -> file-name suffix before the extension,
            e.g. ``{"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2"}``.
        label_suffix: suffix of the label map (``"_seg"``); ``None`` for image-only data.
        extensions: accepted file extensions, e.g. ``[".nii.gz", ".nii"]``.
        label_files: case ID -> label file name in the case folder, for releases that ship
            a label under another name (BraTS 2020 case 355: ``W39_1998.09.19_Segm.nii``).
    """

    def __init__(
        self,
        modality_suffixes: Mapping[str, str],
        label_suffix: str | None = "_seg",
        extensions: Sequence[str] = (".nii.gz", ".nii"),
        label_files: Mapping[str, str] | None = None,
    ) -> None:
        self.modality_suffixes = dict(modality_suffixes)
        self.label_suffix = label_suffix
        self.extensions = tuple(extensions)
        self.label_files = dict(label_files or {})

    def describe(self) -> str:
        """A one-line description of the expected layout, for error messages."""
        names = [f"<case>{s}" for s in self.modality_suffixes.values()]
        if self.label_suffix:
            names.append(f"<case>{self.label_suffix}")
        return f"case folders holding {{{', '.join(names)}}}{{{', '.join(self.extensions)}}}"

    def _match(self, name: str) -> tuple[str, str] | None:
        """Split a file name into (case_id, role) where role is a modality or ``"label"``."""
        roles = dict(self.modality_suffixes)
        if self.label_suffix:
            roles["label"] = self.label_suffix
        for ext in self.extensions:
            if not name.endswith(ext):
                continue
            stem = name[: -len(ext)]
            # Longest suffix first, so that "_t1ce" is never read as "_t1".
            for role, suffix in sorted(roles.items(), key=lambda kv: -len(kv[1])):
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    return stem[: -len(suffix)], role
        return None

    def find_cases(self, root: str | Path) -> list[CaseFiles]:
        """Find every case anywhere under ``root``, sorted by case ID.

        Raises:
            DataError: the root does not exist or holds no case; a case lacks a modality;
                two folders hold the same case ID.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data root {root} does not exist or is not a folder; expected {self.describe()}")
        groups: dict[tuple[Path, str], dict[str, Path]] = {}
        for path in sorted(root.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue  # hidden files and folders (e.g. half-written temporary ones) are not cases
            matched = self._match(path.name)
            if matched is None:
                continue
            case_id, role = matched
            groups.setdefault((path.parent, case_id), {})[role] = path
        if not groups:
            raise DataError(f"no cases found under {root}; expected {self.describe()}")
        cases: dict[str, CaseFiles] = {}
        for (folder, case_id), roles in groups.items():
            missing = [m for m in self.modality_suffixes if m not in roles]
            if missing:
                expected = ", ".join(f"{case_id}{self.modality_suffixes[m]}{self.extensions[0]}" for m in missing)
                raise DataError(f"case {case_id} in {folder}: missing modality {missing} (expected {expected})")
            if case_id in cases:
                other = next(iter(cases[case_id].images.values())).parent
                raise DataError(f"case ID {case_id} appears twice: in {other} and in {folder}")
            images = {m: roles[m] for m in self.modality_suffixes}
            label = roles.get("label")
            if label is None and case_id in self.label_files and (folder / self.label_files[case_id]).is_file():
                label = folder / self.label_files[case_id]
            cases[case_id] = CaseFiles(case_id, images, label)
        return [cases[k] for k in sorted(cases)]


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one 3D NIfTI file. Returns ``(array (X, Y, Z), affine (4, 4), spacing (3,) mm)``.

    Raises:
        DataError: the file is corrupt or truncated, or not 3D.
    """
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt or truncated files
        raise DataError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, found shape {data.shape}")
    return data, img.affine, np.asarray(img.header.get_zooms()[:3], dtype=np.float64)


def load_case(files: CaseFiles, modalities: Sequence[str], labels: Mapping[str, int] | None = None) -> LoadedCase:
    """Load a case's modalities (in ``modalities`` order) and its label map.

    Args:
        files: the case's files, from :meth:`BratsLayout.find_cases`.
        modalities: the modality names to stack as channels, e.g. ``["flair", "t1", "t1ce", "t2"]``.
        labels: the dataset's label map (name -> code); label values outside it and 0 are errors.

    Returns:
        a :class:`LoadedCase` with ``image`` of shape ``(C, X, Y, Z)``.

    Raises:
        DataError: a file is corrupt or not 3D; a modality is not in the case; shapes or
            affines differ between files; NaN or Inf voxels; unknown label values.
    """
    arrays = []
    ref_path = ref_affine = ref_spacing = None
    for modality in modalities:
        if modality not in files.images:
            raise DataError(f"case {files.case_id}: modality {modality!r} not in {sorted(files.images)}")
        path = files.images[modality]
        data, affine, spacing = _read_nifti(path)
        if ref_path is None:
            ref_path, ref_affine, ref_spacing, ref_shape = path, affine, spacing, data.shape
        _check_same_grid(path, data.shape, affine, ref_path, ref_shape, ref_affine)
        data = data.astype(np.float32)
        if not np.isfinite(data).all():
            raise DataError(f"{path}: contains NaN or Inf voxels")
        arrays.append(data)
    label = None
    if files.label is not None:
        data, affine, _ = _read_nifti(files.label)
        _check_same_grid(files.label, data.shape, affine, ref_path, ref_shape, ref_affine)
        if labels is not None:
            allowed = {0, *map(int, labels.values())}
            found = set(np.unique(data).tolist())
            unknown = sorted(found - allowed)
            if unknown:
                raise DataError(
                    f"{files.label}: unknown label values {unknown}; the dataset's label map is {dict(labels)}"
                )
        label = data.astype(np.uint8)
    return LoadedCase(files.case_id, np.stack(arrays), label, ref_affine, ref_spacing, files)


def _check_same_grid(path, shape, affine, ref_path, ref_shape, ref_affine) -> None:
    if shape != ref_shape:
        raise DataError(f"{path}: shape {shape} differs from {ref_path} {ref_shape}")
    if not np.allclose(affine, ref_affine, atol=1e-3):
        raise DataError(f"{path}: affine differs from {ref_path}:\n{affine}\nvs\n{ref_affine}")
