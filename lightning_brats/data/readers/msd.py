"""The Medical Segmentation Decathlon reader (Task01_BrainTumour): one 4D NIfTI file per case.

Simpson et al., "A large annotated medical image dataset for the development and evaluation of
segmentation algorithms", arXiv:1902.09063 (2019). Registry name: ``msd``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning_brats.data.readers.base import (
    CaseFiles,
    CaseLoading,
    DataError,
    check_root,
    printable,
    report_problem,
    walk,
)


class MsdReader(CaseLoading):
    """The Decathlon layout: ``<task>/imagesTr/<case>.nii.gz`` holds the modalities on the 4th axis.

    ``<task>/labelsTr/<case>.nii.gz`` holds the label map (``imagesTs`` cases have no labels).
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

    name = "msd"
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

    @property
    def modalities(self) -> list[str]:
        """The modality names this layout can deliver (``data.modalities`` must be among them)."""
        return list(self.modality_names)

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
        root = check_root(root, self)
        cases: dict[str, CaseFiles] = {}
        found = walk(root, problems)  # once: a problem it reports is reported once
        folders = [d for name in self.images_dirs for d in found if d.name == name and d.is_dir()]
        if root.name in self.images_dirs:
            folders.append(root)
        for folder in folders:
            if not os.access(folder, os.R_OK | os.X_OK):  # walk reported it (check-data goes on)
                continue
            channels = self.channels(folder.parent)
            for path in sorted(folder.iterdir()):
                ext = next((e for e in self.extensions if path.name.endswith(e)), None)
                if ext is None or path.name.startswith(".") or printable(path.name) != path.name:  # walk warned
                    continue
                case_id = path.name[: -len(ext)]
                if case_id in cases:
                    first = next(iter(cases[case_id].images.values()))
                    report_problem(f"case ID {case_id} appears twice: {first} and {path}", problems)
                    continue
                label = folder.parent / self.labels_dir / path.name
                cases[case_id] = CaseFiles(
                    case_id, {m: path for m in self.modality_names}, label if label.is_file() else None, channels
                )
        if not cases:
            raise DataError(f"no cases found under {root}; expected {self.describe()}")
        return [cases[k] for k in sorted(cases)]

