"""The BraTS reader: one folder per case, one NIfTI file per modality and one for the label.

BraTS 2018-2021 name files ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``, BraTS 2023+
``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``; the suffixes come from ``data.layout``, so each
release is a config (``conf/data/brats20.yaml``, ``brats23.yaml``, ...). Registry name:
``brats_folders``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning_brats.data.readers.base import (
    CaseFiles,
    CaseLoading,
    DataError,
    check_root,
    report_problem,
    walk,
)


class BratsFolderReader(CaseLoading):
    """A BraTS-style layout: case folders anywhere under the root, one NIfTI file per modality.

    Args:
        modality_suffixes: modality name -> file-name suffix before the extension,
            e.g. ``{"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2"}``.
        label_suffix: suffix of the label map (``"_seg"``); ``None`` for image-only data.
        extensions: accepted file extensions, e.g. ``[".nii.gz", ".nii"]``.
        label_files: case ID -> label file name in the case folder, for releases that ship
            a label under another name (BraTS 2020 case 355: ``W39_1998.09.19_Segm.nii``).
    """

    name = "brats_folders"
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

    @property
    def modalities(self) -> list[str]:
        """The modality names this layout can deliver (``data.modalities`` must be among them)."""
        return list(self.modality_suffixes)

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
        root = check_root(root, self)
        groups: dict[tuple[Path, str], dict[str, Path]] = {}
        for path in walk(root, problems):
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
                report_problem(problem, problems)
                continue
            images = {m: roles[m] for m in self.modality_suffixes}
            label = roles.get("label")
            if label is None and case_id in self.label_files and (folder / self.label_files[case_id]).is_file():
                label = folder / self.label_files[case_id]
            cases[case_id] = CaseFiles(case_id, images, label)
        return [cases[k] for k in sorted(cases)]

