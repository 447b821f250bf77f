"""Readers for dataset layouts on disk: find cases, load their modalities and labels.

A layout is described by configuration only (file suffixes and extensions), so another
release with other file names is a config change, not a code change. The BraTS 2018-2021
layout is ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``, found anywhere under the root;
:class:`MsdLayout` reads the Decathlon's 4D files and :class:`SliceLayout` the LGG set's
per-slice TIFF files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError


class DataError(ValueError):
    """A dataset file or folder is unusable; the message names the path and the problem."""


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

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

    def sources(self) -> list[Path]:
        """Every file the case is read from (each once), e.g. to notice a changed source."""
        return list(dict.fromkeys([*self.images.values(), *([self.label] if self.label else [])]))


@dataclass(frozen=True)
class SliceFiles(CaseFiles):
    """A case stored as one 2D image file per axial slice (the LGG set), all modalities in each.

    Attributes:
        images: modality name -> the case folder (every slice file holds every modality).
        label: the case folder when every slice has a mask file, else ``None``.
        channels: modality name -> channel index in each slice file.
        slices: the slice image files in slice order (numeric, not alphabetical).
        masks: the mask file of each slice, same order; empty for an unlabelled case.
        spacing: nominal voxel size in mm (row, column, slice); the files carry none.
    """

    slices: tuple[Path, ...] = ()
    masks: tuple[Path, ...] = ()
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)

    def sources(self) -> list[Path]:
        return [*self.slices, *self.masks]


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

    #: ``data.sampling`` modes this layout's volumes support.
    sampling = ("2d", "3d")

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

    def find_cases(self, root: str | Path, problems: list[str] | None = None) -> list[CaseFiles]:
        """Find every case anywhere under ``root``, sorted by case ID.

        Args:
            root: the dataset folder.
            problems: if given, a case lacking a modality or repeating an ID is described
                here and left out instead of raising (used by ``check-data``).

        Raises:
            DataError: the root does not exist or holds no case; a case lacks a modality;
                two folders hold the same case ID.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data root {root} does not exist or is not a folder; expected {self.describe()}")
        groups: dict[tuple[Path, str], dict[str, Path]] = {}
        for path in walk(root):
            if not path.is_file():
                continue
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
            problem = None
            if missing:
                expected = ", ".join(f"{case_id}{self.modality_suffixes[m]}{self.extensions[0]}" for m in missing)
                problem = f"case {case_id} in {folder}: missing modality {missing} (expected {expected})"
            elif case_id in cases:
                other = next(iter(cases[case_id].images.values())).parent
                problem = f"case ID {case_id} appears twice: in {other} and in {folder}"
            if problem is not None:
                _report(problem, problems)
                continue
            images = {m: roles[m] for m in self.modality_suffixes}
            label = roles.get("label")
            if label is None and case_id in self.label_files and (folder / self.label_files[case_id]).is_file():
                label = folder / self.label_files[case_id]
            cases[case_id] = CaseFiles(case_id, images, label)
        return [cases[k] for k in sorted(cases)]


def walk(root: Path) -> list[Path]:
    """Every file and folder under ``root``, sorted, following symlinked folders (datasets are often
    linked together on clusters), skipping hidden ones (e.g. half-written temporary files).

    Returns:
        paths under ``root`` (files and folders), sorted.
    """
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(folder) / name for name in [*dirs, *files] if not name.startswith("."))
    return sorted(found)


def _report(problem: str, problems: list[str] | None) -> None:
    """Collect ``problem`` into ``problems`` (``check-data``), or raise it when not collecting.

    Raises:
        DataError: ``problems`` is ``None``.
    """
    if problems is None:
        raise DataError(problem)
    problems.append(problem)


def _read_nifti(path: Path, ndim: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def load_case(
    files: CaseFiles, modalities: Sequence[str], labels: Mapping[str, int] | None = None, read_label: bool = True
) -> LoadedCase:
    """Load a case's modalities (in ``modalities`` order) and its label map.

    Args:
        files: the case's files, from :meth:`BratsLayout.find_cases`.
        modalities: the modality names to stack as channels, e.g. ``["flair", "t1", "t1ce", "t2"]``.
        labels: the dataset's label map (name -> code); label values outside it and 0 are errors.
        read_label: ``False`` skips the label map even when the case has one (prediction).

    Returns:
        a :class:`LoadedCase` with ``image`` of shape ``(C, X, Y, Z)``.

    Raises:
        DataError: a file is corrupt or not 3D; a modality is not in the case; shapes or
            affines differ between files; NaN or Inf voxels; unknown label values.
    """
    if isinstance(files, SliceFiles):
        return _load_slices(files, modalities, labels, read_label)
    arrays = []
    ref_path = ref_affine = ref_spacing = None
    stacks: dict[Path, tuple] = {}  # a 4D file is read once for all its channels
    for modality in modalities:
        if modality not in files.images:
            raise DataError(f"case {files.case_id}: modality {modality!r} not in {sorted(files.images)}")
        path = files.images[modality]
        if files.channels is None:
            data, affine, spacing = _read_nifti(path)
        else:
            if path not in stacks:
                stacks[path] = _read_nifti(path, ndim=4)
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
        arrays.append(data)
    label = None
    if files.label is not None and read_label:
        data, affine, _ = _read_nifti(files.label)
        check_same_grid(files.label, data.shape, affine, ref_path, ref_shape, ref_affine)
        check_label_values(files.label, data, labels)
        label = data.astype(np.uint8)
    return LoadedCase(files.case_id, np.stack(arrays), label, ref_affine, ref_spacing, files)


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


class MsdLayout:
    """The Medical Segmentation Decathlon layout (Task01_BrainTumour): one 4D file per case.

    ``<task>/imagesTr/<case>.nii.gz`` holds the modalities on the 4th axis and
    ``<task>/labelsTr/<case>.nii.gz`` the label map (``imagesTs`` cases have no labels).
    The channel of each modality is read from ``<task>/dataset.json`` (its ``modality``
    entry) where present, else taken from the order of ``modality_names``. macOS
    ``._*`` files that ship in the MSD archive are ignored.

    Args:
        modality_names: our modality name -> the name in dataset.json, in channel order,
            e.g. ``{"flair": "FLAIR", "t1": "T1w", "t1ce": "t1gd", "t2": "T2w"}``.
        images_dirs: folders holding images (``["imagesTr", "imagesTs"]``).
        labels_dir: the folder holding labels, beside the images folder.
        extensions: accepted file extensions.
    """

    #: ``data.sampling`` modes this layout's volumes support.
    sampling = ("2d", "3d")

    def __init__(
        self,
        modality_names: Mapping[str, str],
        images_dirs: Sequence[str] = ("imagesTr", "imagesTs"),
        labels_dir: str = "labelsTr",
        extensions: Sequence[str] = (".nii.gz", ".nii"),
    ) -> None:
        self.modality_names = dict(modality_names)
        self.images_dirs = tuple(images_dirs)
        self.labels_dir = labels_dir
        self.extensions = tuple(extensions)

    def describe(self) -> str:
        """A one-line description of the expected layout, for error messages."""
        return (
            f"<task>/{{{', '.join(self.images_dirs)}}}/<case>{self.extensions[0]} (4D: {', '.join(self.modality_names.values())})"
            f" with labels in <task>/{self.labels_dir}/"
        )

    def channels(self, task: Path) -> dict[str, int]:
        """Modality -> channel index for one task folder (from its dataset.json where present).

        Raises:
            DataError: dataset.json is unreadable or lacks one of the modalities.
        """
        default = {m: i for i, m in enumerate(self.modality_names)}
        path = task / "dataset.json"
        if not path.is_file():
            return default
        try:
            listed = json.loads(path.read_text())["modality"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: cannot read its 'modality' entry ({exc})") from exc
        by_name = {str(name).lower(): int(index) for index, name in listed.items()}
        missing = [n for n in self.modality_names.values() if n.lower() not in by_name]
        if missing:
            raise DataError(f"{path}: modalities {missing} are not in its 'modality' entry {listed}")
        return {m: by_name[n.lower()] for m, n in self.modality_names.items()}

    def find_cases(self, root: str | Path, problems: list[str] | None = None) -> list[CaseFiles]:
        """Find every case in every images folder under ``root``, sorted by case ID.

        Args:
            root: the dataset folder.
            problems: if given, a repeated case ID is described here instead of raising.

        Raises:
            DataError: the root does not exist or holds no case; two files share a case ID.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data root {root} does not exist or is not a folder; expected {self.describe()}")
        cases: dict[str, CaseFiles] = {}
        folders = [d for name in self.images_dirs for d in walk(root) if d.name == name and d.is_dir()]
        if root.name in self.images_dirs:
            folders.append(root)
        for folder in folders:
            channels = self.channels(folder.parent)
            for path in sorted(folder.iterdir()):
                ext = next((e for e in self.extensions if path.name.endswith(e)), None)
                if ext is None or path.name.startswith("."):
                    continue
                case_id = path.name[: -len(ext)]
                if case_id in cases:
                    _report(f"case ID {case_id} appears twice: {next(iter(cases[case_id].images.values()))} and {path}", problems)
                    continue
                label = folder.parent / self.labels_dir / path.name
                cases[case_id] = CaseFiles(
                    case_id, {m: path for m in self.modality_names}, label if label.is_file() else None, channels
                )
        if not cases:
            raise DataError(f"no cases found under {root}; expected {self.describe()}")
        return [cases[k] for k in sorted(cases)]


class SliceLayout:
    """Cases stored as 2D image files, one per axial slice, as in the LGG set of Buda et al.

    The Kaggle "lgg-mri-segmentation" release (Buda, Saha, Mazurowski, Comput. Biol. Med. 2019)
    holds ``kaggle_3m/TCGA_<inst>_<patient>_<date>/<case>_<n>.tif`` (256 x 256 x 3 uint8:
    pre-contrast, FLAIR, post-contrast) and ``<case>_<n>_mask.tif`` (256 x 256, 0 or 255).
    Slice numbers are 1-based and not zero-padded, so they are sorted numerically. The slices
    of a case stack into one ``(C, H, W, S)`` volume; the files carry no geometry, so the
    affine is a diagonal of the nominal ``spacing`` and the volume suits 2D sampling only.

    Args:
        channels: modality name -> channel index in each slice file,
            e.g. ``{"pre_contrast": 0, "flair": 1, "post_contrast": 2}``.
        mask_suffix: suffix of mask files after the slice number (``"_mask"``).
        extensions: accepted file extensions.
        spacing: nominal voxel size in mm written into the affine (row, column, slice).
    """

    #: The slice spacing is not known, so volumes are only sampled slice by slice.
    sampling = ("2d",)

    def __init__(
        self,
        channels: Mapping[str, int],
        mask_suffix: str = "_mask",
        extensions: Sequence[str] = (".tif", ".tiff"),
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        self.channels = {str(k): int(v) for k, v in channels.items()}
        self.mask_suffix = mask_suffix
        self.extensions = tuple(extensions)
        self.spacing = [float(v) for v in spacing]
        suffix = re.escape(mask_suffix)
        self._pattern = re.compile(rf"^(?P<case>.+)_(?P<slice>\d+)(?P<mask>{suffix})?$")

    def describe(self) -> str:
        """A one-line description of the expected layout, for error messages."""
        return f"case folders holding <case>_<slice>{{{', '.join(self.extensions)}}} and <case>_<slice>{self.mask_suffix}"

    def find_cases(self, root: str | Path, problems: list[str] | None = None) -> list[SliceFiles]:
        """Find every case anywhere under ``root``, sorted by case ID, slices in numeric order.

        Args:
            root: the dataset folder.
            problems: if given, a case with missing slices or masks, or a repeated ID, is
                described here and left out instead of raising (used by ``check-data``).

        Raises:
            DataError: the root does not exist or holds no case; slice numbers have gaps;
                some but not all slices have masks (or a mask has no image); two folders
                hold the same case ID.
        """
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data root {root} does not exist or is not a folder; expected {self.describe()}")
        groups: dict[tuple[Path, str], dict[str, dict[int, Path]]] = {}
        for path in walk(root):
            if not path.is_file():
                continue
            ext = next((e for e in self.extensions if path.name.lower().endswith(e)), None)
            match = ext and self._pattern.match(path.name[: -len(ext)])
            if not match:
                continue
            role = "masks" if match["mask"] else "slices"
            groups.setdefault((path.parent, match["case"]), {"slices": {}, "masks": {}})[role][int(match["slice"])] = path
        if not groups:
            raise DataError(f"no cases found under {root}; expected {self.describe()}")
        cases: dict[str, SliceFiles] = {}
        for (folder, case_id), found in groups.items():
            numbers, masked = sorted(found["slices"]), sorted(found["masks"])
            problem = None
            gaps = sorted(set(range(1, numbers[-1] + 1)) - set(numbers)) if numbers else []
            if not numbers:
                problem = f"case {case_id} in {folder}: mask files but no slice images"
            elif gaps:
                problem = f"case {case_id} in {folder}: slices {gaps} are missing (found {len(numbers)} of 1..{numbers[-1]})"
            elif masked and masked != numbers:
                unmatched = sorted(set(numbers) ^ set(masked))
                problem = f"case {case_id} in {folder}: slices {unmatched} lack an image or a {self.mask_suffix} file"
            elif case_id in cases:
                problem = f"case ID {case_id} appears twice: in {cases[case_id].slices[0].parent} and in {folder}"
            if problem is not None:
                _report(problem, problems)
                continue
            cases[case_id] = SliceFiles(
                case_id,
                images=dict.fromkeys(self.channels, folder),
                label=folder if masked else None,
                channels=dict(self.channels),
                slices=tuple(found["slices"][n] for n in numbers),
                masks=tuple(found["masks"][n] for n in masked),
                spacing=tuple(self.spacing),
            )
        return [cases[k] for k in sorted(cases)]


def _read_image(path: Path) -> np.ndarray:
    """Read a 2D image file (TIFF, PNG) as ``(H, W[, C])``; :class:`DataError` naming it if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def _load_slices(
    files: SliceFiles, modalities: Sequence[str], labels: Mapping[str, int] | None, read_label: bool = True
) -> LoadedCase:
    """Stack a :class:`SliceFiles` case into ``image (C, H, W, S)`` and ``label (H, W, S)``."""
    missing = [m for m in modalities if m not in files.channels]
    if missing:
        raise DataError(f"case {files.case_id}: modalities {missing} not in {sorted(files.channels)}")
    images, masks = [], []
    for path in files.slices:
        data = _read_image(path)
        if data.ndim == 2:
            data = data[..., None]
        if images and data.shape != images[0].shape:
            raise DataError(f"{path}: shape {data.shape} differs from {files.slices[0]} {images[0].shape}")
        for modality in modalities:
            if files.channels[modality] >= data.shape[2]:
                raise DataError(f"{path}: no channel {files.channels[modality]} for {modality!r} in shape {data.shape}")
        images.append(data)
    for path in files.masks if read_label else ():
        data = _read_image(path)
        if data.ndim == 3:  # some exports save masks as RGB: all channels equal
            data = data[..., 0]
        if data.shape != images[0].shape[:2]:
            raise DataError(f"{path}: shape {data.shape} differs from its slice image {images[0].shape[:2]}")
        check_label_values(path, data, labels)
        masks.append(data)
    stack = np.stack(images, axis=-1).astype(np.float32)  # (H, W, C, S)
    image = np.stack([stack[:, :, files.channels[m]] for m in modalities])
    label = np.stack(masks, axis=-1).astype(np.uint8) if masks else None
    spacing = np.asarray(files.spacing, dtype=np.float64)
    return LoadedCase(files.case_id, image, label, np.diag([*spacing, 1.0]), spacing, files)


#: Any of the layouts above (each has ``find_cases``, ``describe`` and ``sampling``).
Layout = BratsLayout | MsdLayout | SliceLayout
