"""The LGG reader: one 2D TIFF file per axial slice, as in the LGG set of Buda et al.

Buda, Saha, Mazurowski, "Association of genomic subtypes of lower-grade gliomas with shape
features automatically extracted by a deep learning algorithm", Comput. Biol. Med. 2019; the
Kaggle "lgg-mri-segmentation" release. Registry name: ``lgg_slices``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lightning_brats.data.readers.base import (
    CaseLoading,
    DataError,
    LoadedCase,
    check_label_values,
    check_root,
    report_problem,
    walk,
)


@dataclass(frozen=True)
class SliceFiles:
    """A case stored as one 2D image file per axial slice, all modalities in each (the LGG set).

    Attributes:
        case_id: the case identifier (the patient), e.g. ``TCGA_CS_4941_19960909``.
        folder: the case folder.
        channels: modality name -> channel index in each slice file.
        slices: the slice image files in slice order (numeric, not alphabetical).
        masks: the mask file of each slice, same order; empty for an unlabelled case.
        spacing: nominal voxel size in mm (row, column, slice); the files carry none.
    """

    case_id: str
    folder: Path
    channels: dict[str, int]
    slices: tuple[Path, ...] = ()
    masks: tuple[Path, ...] = ()
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)

    @property
    def labelled(self) -> bool:
        """Whether every slice has a mask file."""
        return bool(self.masks)

    @property
    def label_source(self) -> Path | None:
        """The case folder, whose mask files make the label map; ``None`` if unlabelled."""
        return self.folder if self.masks else None

    def sources(self) -> list[Path]:
        """Every file the case is read from: the slices, then the masks."""
        return [*self.slices, *self.masks]

    def load(
        self, modalities: Sequence[str], labels: Mapping[str, int] | None = None, read_label: bool = True
    ) -> LoadedCase:
        """Read the case (see :func:`load_slices`)."""
        return load_slices(self, modalities, labels, read_label)


class LggSliceReader(CaseLoading):
    """Cases stored as 2D image files, one per axial slice: ``kaggle_3m/<case>/<case>_<n>.tif``.

    The Kaggle release holds ``kaggle_3m/TCGA_<inst>_<patient>_<date>/<case>_<n>.tif``
    (256 x 256 x 3 uint8: pre-contrast, FLAIR, post-contrast) and ``<case>_<n>_mask.tif``
    (256 x 256, 0 or 255). Slice numbers are 1-based and not zero-padded, so they are sorted
    numerically. The slices of a case stack into one ``(C, H, W, S)`` volume; the files carry no
    geometry, so the affine is a diagonal of the nominal ``spacing`` and the volume suits 2D
    sampling only.

    Args:
        channels: modality name -> channel index in each slice file,
            e.g. ``{"pre_contrast": 0, "flair": 1, "post_contrast": 2}``.
        mask_suffix: suffix of mask files after the slice number (``"_mask"``).
        extensions: accepted file extensions.
        spacing: nominal voxel size in mm written into the affine (row, column, slice).
    """

    name = "lgg_slices"
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

    @property
    def modalities(self) -> list[str]:
        """The modality names this layout can deliver (``data.modalities`` must be among them)."""
        return list(self.channels)

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
        root = check_root(root, self)
        groups: dict[tuple[Path, str], dict[str, dict[int, Path]]] = {}
        for path in walk(root, problems):
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
                problem = f"case ID {case_id} appears twice: in {cases[case_id].folder} and in {folder}"
            if problem is not None:
                report_problem(problem, problems)
                continue
            cases[case_id] = SliceFiles(
                case_id,
                folder=folder,
                channels=dict(self.channels),
                slices=tuple(found["slices"][n] for n in numbers),
                masks=tuple(found["masks"][n] for n in masked),
                spacing=tuple(self.spacing),
            )
        return [cases[k] for k in sorted(cases)]



def read_image(path: Path) -> np.ndarray:
    """Read a 2D image file (TIFF, PNG) as ``(H, W[, C])``.

    Raises:
        DataError: the file is unreadable (the message names it).
    """
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def load_slices(
    files: SliceFiles, modalities: Sequence[str], labels: Mapping[str, int] | None = None, read_label: bool = True
) -> LoadedCase:
    """Stack a :class:`SliceFiles` case into ``image (C, H, W, S)`` float32 and ``label (H, W, S)`` uint8.

    The affine is ``diag(spacing, 1)`` (mm): the files carry no geometry.

    Raises:
        DataError: a modality is not among the case's channels; a slice or mask is unreadable,
            has another shape than the first slice, or lacks a channel; unknown label values.
    """
    missing = [m for m in modalities if m not in files.channels]
    if missing:
        raise DataError(f"case {files.case_id}: modalities {missing} not in {sorted(files.channels)}")
    images, masks = [], []
    for path in files.slices:
        data = read_image(path)
        if data.ndim == 2:
            data = data[..., None]
        if images and data.shape != images[0].shape:
            raise DataError(f"{path}: shape {data.shape} differs from {files.slices[0]} {images[0].shape}")
        for modality in modalities:
            if files.channels[modality] >= data.shape[2]:
                raise DataError(f"{path}: no channel {files.channels[modality]} for {modality!r} in shape {data.shape}")
        images.append(data)
    for path in files.masks if read_label else ():
        data = read_image(path)
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
