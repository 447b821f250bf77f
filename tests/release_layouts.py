"""Build another release's folder layout from BraTS 2018-style cases, without touching the source.

The one builder of release layouts: ``experiments/build_layouts.py`` (a thin wrapper), the tests
and the docs use it, and its :data:`LABEL_CODES`, :data:`BRATS23_SUFFIXES` and
:data:`MSD_MODALITIES` are the mappings between releases.

Usage:
    python -m tests.release_layouts --source DIR --out DIR --release RELEASE  (or:)
    python experiments/build_layouts.py --source ../shared/data/brats2018 --out data/layouts/brats20 --release brats20
    python experiments/build_layouts.py --source ../shared/data/brats2018 --out data/layouts/brats21 --release brats21
    python experiments/build_layouts.py --source ../shared/data/brats2018 --out data/layouts/msd --release msd_task01
    python experiments/build_layouts.py --source ../shared/data/brats2018 --out data/layouts/ped --release brats_ped
    # a subset: --cases Brats18_2013_11_1 Brats18_CBICA_ABM_1 (default: every case under --source)

The source holds case folders ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` with the BraTS
2018-2021 label codes 1 NCR/NET, 2 ED, 4 ET. Cases are renamed in sorted order of their source
IDs (the first becomes ``BraTS20_Training_001``, ``BraTS2021_00001`` or ``BRATS_001``) and
``sources.csv`` in ``--out`` records which source case each one is. What each release gets:

- ``brats20`` (Kaggle/Synapse 2020, ``data=brats20``):
  ``MICCAI_BraTS2020_TrainingData/BraTS20_Training_NNN/BraTS20_Training_NNN_{flair,t1,t1ce,t2,seg}.nii``,
  uncompressed copies (the source ``.nii.gz`` decompressed byte for byte: the same NIfTI).
- ``brats21`` (``data=brats21``): ``BraTS2021_NNNNN/BraTS2021_NNNNN_{...}.nii.gz``, symlinks to the source files.
- ``brats23`` (``data=brats23``): ``BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t2f,t1n,t1c,t2w}.nii.gz`` symlinks
  and a converted ``-seg.nii.gz`` (ET 4 -> 3).
- the 2023+ sub-challenges (``data=brats_men``, ``brats_met``, ``brats_ssa``, ``brats24_gli``, ``brats_ped``):
  ``BraTS-<SUB>-NNNNN-000/BraTS-<SUB>-NNNNN-000-{t2f,t1n,t1c,t2w}.nii.gz`` symlinks and a relabelled
  ``-seg.nii.gz``. MEN, MET and SSA get the 2023 codes (as ``brats23``). The source has no resection
  cavity and no cyst, so NCR/NET is split in two at the median first-axis index of its voxels (the
  half at or above it is :data:`SPLIT_CODES`'s second code): ``brats24_gli`` gets 1 NETC and 4 RC,
  ED 2 SNFH, ET 3; ``brats_ped`` gets the 2024 paediatric codes, ET 1, NET 2 and CC 3 from NCR/NET,
  ED 4. These label the real anatomy with stand-in classes: they test the label plumbing, not a model.
- ``brats_men_rt`` (``data=brats_men_rt``): ``BraTS-MEN-RT-NNNN-1/BraTS-MEN-RT-NNNN-1_t1c.nii.gz``, a symlink
  to T1ce alone, and ``_gtv.nii.gz``, the whole tumour as the single label 1.
- ``msd_task01`` (``data=msd_task01``): ``Task01_BrainTumour/imagesTr/BRATS_NNN.nii.gz``, one 4D stack per case
  in MSD's channel order (FLAIR, T1w, t1gd, T2w; ``msd_channels`` reorders it), ``labelsTr/BRATS_NNN.nii.gz`` recoded to MSD's codes
  (BraTS 2 ED -> 1 edema, 1 NCR/NET -> 2 non-enhancing, 4 ET -> 3 enhancing) and ``dataset.json``.

Files already in ``--out`` are kept (re-running completes an interrupted build); every file is
written under a temporary name and renamed. ``--out`` must not lie inside ``--source`` (the
source is never written to). Build into a git-ignored folder (``data/`` is) or a temporary one,
never into the repository: these are real patient images.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from lightning_brats.io import write_csv

#: the source's modalities (file suffixes ``_flair`` ...), BraTS 2018-2021 names
MODALITIES = ["flair", "t1", "t1ce", "t2"]
RELEASES = ["brats20", "brats21", "brats23", "msd_task01"]
#: BraTS 2018-2021 codes -> MSD Task01 codes (1 edema, 2 non-enhancing tumour, 3 enhancing tumour)
BRATS_TO_MSD = {2: 1, 1: 2, 4: 3}
#: BraTS 2018-2021 codes -> the 2023 codes (ET 4 -> 3)
BRATS_TO_2023 = {1: 1, 2: 2, 4: 3}
#: our modality names -> MSD's, in MSD's channel order
MSD_MODALITIES = {"flair": "FLAIR", "t1": "T1w", "t1ce": "t1gd", "t2": "T2w"}
#: our modality names -> the 2023+ file suffixes (``<case>-t2f.nii.gz`` ...)
BRATS23_SUFFIXES = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
#: 2023+ sub-challenges in the 2023 file naming: case prefix and BraTS 2018-2021 codes -> the release's
SUBCHALLENGES = {
    "brats_men": ("BraTS-MEN", BRATS_TO_2023),
    "brats_met": ("BraTS-MET", BRATS_TO_2023),
    "brats_ssa": ("BraTS-SSA", BRATS_TO_2023),
    "brats24_gli": ("BraTS-GLI", BRATS_TO_2023),
    "brats_ped": ("BraTS-PED", {1: 2, 2: 4, 4: 1}),
}
#: releases whose NCR/NET (source code 1) is split in two: (code of the lower half, code of the upper half)
SPLIT_CODES = {"brats24_gli": (1, 4), "brats_ped": (2, 3)}
#: every release ``--release`` builds; :data:`RELEASES` are those read as WT/TC/ET with the source's regions
ALL_RELEASES = [*RELEASES, *SUBCHALLENGES, "brats_men_rt"]
#: every release's BraTS 2018-2021 codes -> its codes (before :data:`SPLIT_CODES` splits NCR/NET)
LABEL_CODES = {
    "brats20": {1: 1, 2: 2, 4: 4},
    "brats21": {1: 1, 2: 2, 4: 4},
    "brats23": BRATS_TO_2023,
    "msd_task01": BRATS_TO_MSD,
    **{release: mapping for release, (_, mapping) in SUBCHALLENGES.items()},
    "brats_men_rt": {1: 1, 2: 1, 4: 1},
}


def source_cases(source: Path, cases: Sequence[str] | None = None) -> list[str]:
    """The source's case IDs (folders holding ``<case>_seg.nii.gz``), sorted; or ``cases``, checked.

    Raises:
        FileNotFoundError: the source holds no such case, or a listed case is missing a file.
    """
    found = sorted(d.name for d in source.iterdir() if d.is_dir() and (d / f"{d.name}_seg.nii.gz").is_file())
    wanted = list(cases) if cases else found
    missing = [c for c in wanted if c not in found]
    if missing or not wanted:
        raise FileNotFoundError(f"{source}: no labelled case folders {missing or ''} (<case>/<case>_seg.nii.gz)")
    for case in wanted:
        for part in [*MODALITIES, "seg"]:
            if not (source / case / f"{case}_{part}.nii.gz").is_file():
                raise FileNotFoundError(f"{source / case}: {case}_{part}.nii.gz is missing")
    return wanted


def _write(path: Path, write: Callable[[Path], None]) -> bool:
    """Write ``path`` through a hidden temporary name (skipped when it exists); True if written."""
    if path.exists() or path.is_symlink():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    return True


def _link(src: Path, dst: Path) -> None:
    _write(dst, lambda p: p.symlink_to(src.resolve()))


def _gunzip(src: Path, dst: Path) -> None:
    def write(p: Path) -> None:
        with gzip.open(src, "rb") as fin, open(p, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)

    _write(dst, write)


def split_code(label: np.ndarray, code: int) -> np.ndarray:
    """The voxels of ``code`` at or above the median first-axis index of that code's voxels.

    Args:
        label: ``(X, Y, Z)`` label map.
        code: the label to split.

    Returns:
        ``(X, Y, Z)`` bool mask (all false when ``code`` is absent).
    """
    where = label == code
    if not where.any():
        return where
    xs = np.nonzero(where)[0]
    upper = np.zeros_like(where)
    upper[int(np.median(xs)):] = True
    return where & upper


def _recode(src: Path, dst: Path, mapping: dict[int, int], split: tuple[int, int] | None = None) -> None:
    """A label file with its codes mapped (codes not in ``mapping`` become 0), same grid, uint8.

    With ``split=(lower, upper)``, the source's NCR/NET (code 1) voxels get ``lower`` and those
    :func:`split_code` selects get ``upper``.
    """
    if dst.exists():
        return
    seg = nib.load(src)
    label = np.asarray(seg.dataobj)
    unknown = sorted(set(np.unique(label).tolist()) - {0, *mapping})
    if unknown:
        raise ValueError(f"{src}: label values {unknown} are not BraTS 2018-2021 codes 0, 1, 2, 4")
    out = np.zeros(label.shape, dtype=np.uint8)
    for old, new in mapping.items():
        out[label == old] = new
    if split is not None:
        out[label == 1] = split[0]
        out[split_code(label, 1)] = split[1]
    header = seg.header.copy()
    header.set_data_dtype(np.uint8)
    _write(dst, lambda p: nib.save(nib.Nifti1Image(out, seg.affine, header), p))


def _stack(srcs: Sequence[Path], dst: Path) -> None:
    """One 4D NIfTI ``(X, Y, Z, C)`` of the 3D files ``srcs`` (same grid), the first file's geometry."""
    if dst.exists():
        return
    images = [nib.load(s) for s in srcs]
    for src, img in zip(srcs[1:], images[1:]):
        if img.shape != images[0].shape or not np.allclose(img.affine, images[0].affine):
            raise ValueError(f"{src}: grid differs from {srcs[0]}")
    data = np.stack([np.asarray(i.dataobj) for i in images], axis=-1)
    header = images[0].header.copy()
    header.set_data_shape(data.shape)
    header.set_zooms((*images[0].header.get_zooms()[:3], 1.0))
    _write(dst, lambda p: nib.save(nib.Nifti1Image(data, images[0].affine, header), p))


def _files(source: Path, case: str) -> dict[str, Path]:
    return {part: source / case / f"{case}_{part}.nii.gz" for part in [*MODALITIES, "seg"]}


def build(
    source: str | Path, out: str | Path, release: str, cases: Sequence[str] | None = None,
    msd_channels: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """Build ``release``'s layout in ``out`` from the cases in ``source``.

    Args:
        source: folder of BraTS 2018-style case folders (read only).
        out: folder to build in (must not contain or lie inside ``source``).
        release: one of :data:`ALL_RELEASES`.
        cases: source case IDs to use (default: every labelled case, sorted).
        msd_channels: ``msd_task01`` only: the channel order of the 4D stacks and ``dataset.json``
            (default: MSD's, :data:`MSD_MODALITIES`).

    Returns:
        ``[(source case, new case ID), ...]`` in build order (also written to ``out/sources.csv``).

    Raises:
        ValueError: an unknown release, ``out`` inside ``source`` (or the reverse), unexpected label
            codes, or ``msd_channels`` that are not the four modalities.
    """
    source, out = Path(source).resolve(), Path(out).resolve()
    if release not in ALL_RELEASES:
        raise ValueError(f"--release {release!r}: expected one of {ALL_RELEASES}")
    if out == source or source in out.parents or out in source.parents:
        raise ValueError(f"--out {out} and --source {source} must not contain each other (the source is read-only)")
    channels = list(msd_channels or MSD_MODALITIES)
    if sorted(channels) != sorted(MSD_MODALITIES):
        raise ValueError(f"msd_channels {channels}: expected an order of {list(MSD_MODALITIES)}")
    ids = source_cases(source, cases)
    pairs = []
    for number, case in enumerate(ids, start=1):
        files = _files(source, case)
        if release == "brats20":
            new = f"BraTS20_Training_{number:03d}"
            folder = out / "MICCAI_BraTS2020_TrainingData" / new
            for part, src in files.items():
                _gunzip(src, folder / f"{new}_{part}.nii")
        elif release == "brats21":
            new = f"BraTS2021_{number:05d}"
            for part, src in files.items():
                _link(src, out / new / f"{new}_{part}.nii.gz")
        elif release == "brats23":
            new = f"BraTS-GLI-{number:05d}-000"
            for modality, suffix in BRATS23_SUFFIXES.items():
                _link(files[modality], out / new / f"{new}-{suffix}.nii.gz")
            _recode(files["seg"], out / new / f"{new}-seg.nii.gz", LABEL_CODES[release])
        elif release in SUBCHALLENGES:
            prefix, mapping = SUBCHALLENGES[release]
            new = f"{prefix}-{number:05d}-000"
            for modality, suffix in BRATS23_SUFFIXES.items():
                _link(files[modality], out / new / f"{new}-{suffix}.nii.gz")
            _recode(files["seg"], out / new / f"{new}-seg.nii.gz", mapping, SPLIT_CODES.get(release))
        elif release == "brats_men_rt":
            new = f"BraTS-MEN-RT-{number:04d}-1"
            _link(files["t1ce"], out / new / f"{new}_t1c.nii.gz")
            _recode(files["seg"], out / new / f"{new}_gtv.nii.gz", LABEL_CODES[release])
        else:
            new = f"BRATS_{number:03d}"
            task = out / "Task01_BrainTumour"
            _stack([files[m] for m in channels], task / "imagesTr" / f"{new}.nii.gz")
            _recode(files["seg"], task / "labelsTr" / f"{new}.nii.gz", LABEL_CODES[release])
        pairs.append((case, new))
    if release == "msd_task01":
        _write_dataset_json(out / "Task01_BrainTumour" / "dataset.json", [new for _, new in pairs], channels)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "sources.csv", [{"source_case": src, "case_id": new, "release": release} for src, new in pairs],
              ["source_case", "case_id", "release"])
    return pairs


def _write_dataset_json(path: Path, ids: Sequence[str], channels: Sequence[str]) -> None:
    """MSD's dataset.json: channel names (read by ``data=msd_task01``), label names, the training list."""
    record = {
        "name": "BRATS",
        "description": "Built by tests.release_layouts from BraTS 2018 training cases",
        "tensorImageSize": "4D",
        "modality": {str(i): MSD_MODALITIES[m] for i, m in enumerate(channels)},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(ids),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids],
        "test": [],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: ``--source``, ``--out``, ``--release``, ``--cases``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="folder of BraTS 2018-style case folders (read only)")
    parser.add_argument("--out", required=True, help="folder to build the layout in (git-ignored or temporary)")
    parser.add_argument("--release", required=True, choices=ALL_RELEASES)
    parser.add_argument("--cases", nargs="*", default=None, help="source case IDs to use (default: all)")
    args = parser.parse_args(argv)
    pairs = build(args.source, args.out, args.release, args.cases)
    print(f"{args.release}: {len(pairs)} cases in {Path(args.out).resolve()} (sources.csv maps them to {args.source})")


if __name__ == "__main__":
    sys.exit(main())
