"""Preprocessing throughput: cases per minute from raw ``.nii.gz`` to the cache, ours against the same
steps done with MONAI transforms, and the share of the time spent decoding gzip.

Usage:
    python experiments/benchmarks/preprocessing.py --root ../shared/data/brats2018 [--cases 3] [--repeats 3]
        [--workers 1] [--spacing 2 2 2] [--csv experiments/benchmarks/preprocessing.csv]
    python experiments/benchmarks/preprocessing.py --tiny ...   # 1 case, 1 repeat

Rows:

- ``ours``: :meth:`~lightning_brats.data.preprocess.PreprocessedCache.ensure` into an empty cache
  (read the 4 modalities and the label, non-zero crop, z-score inside the brain, resampling when
  ``--spacing`` is given, ``.npy`` written atomically with its record), with ``--workers`` processes.
- ``monai``: the same steps as MONAI transforms in one process: ``LoadImaged`` (the 4 modality
  files stacked as channels, and the label) + ``EnsureChannelFirstd`` + ``CropForegroundd`` (the
  non-zero box of the image) + ``NormalizeIntensityd`` (``nonzero=True, channel_wise=True``: z-score
  inside the brain) + ``Spacingd`` (only with ``--spacing``, as ours resamples only then) and
  ``np.save`` of image (float32) and label (uint8).
- ``gzip``: nibabel's ``get_fdata`` of every file of a case (4 modalities + label) from the
  ``.nii.gz`` against the same files decompressed once to ``.nii`` in a temporary folder (outside the
  timing); ``gzip_share`` is the difference as a share of ``ours``' seconds per case (wall), ``gzip_cpu_share``
  the same in CPU seconds of this process (with ``--workers 1`` ours runs in this process).

Each figure is the median of ``--repeats`` runs, each into a fresh output folder (the page cache
holds the source files after the first read in every run alike). Prints a rich table and writes a CSV.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_seconds, report

from lightning_brats.data.layouts import BratsLayout, CaseFiles
from lightning_brats.data.preprocess import PreprocessedCache
from lightning_brats.data.settings import PreprocessingSettings

MODALITIES = ["flair", "t1", "t1ce", "t2"]
LABELS = {"ncr_net": 1, "ed": 2, "et": 4}
LAYOUT = BratsLayout({"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2"}, "_seg", [".nii.gz", ".nii"])


def find_cases(root: str | Path, count: int) -> list[CaseFiles]:
    """The first ``count`` cases under ``root`` (sorted by ID)."""
    cases = sorted(LAYOUT.find_cases(Path(root)), key=lambda c: c.case_id)[:count]
    if not cases:
        raise FileNotFoundError(f"--root {root}: no BraTS 2018-2020 case found")
    return cases


def ours(cases: Sequence[CaseFiles], out: Path, spacing: Sequence[float] | None, workers: int) -> None:
    """Our preprocessing of ``cases`` into an empty cache under ``out``."""
    settings = PreprocessingSettings(tuple(MODALITIES), None if spacing is None else tuple(spacing))
    PreprocessedCache(out, "bench", settings, LABELS).ensure(cases, log=lambda *_: None, workers=workers)


def monai_transform(spacing: Sequence[float] | None):
    """The MONAI transforms doing our steps (see the module docstring)."""
    from monai import transforms as mt

    keys = ["image", "label"]
    steps = [
        mt.LoadImaged(keys=keys, image_only=True),
        mt.EnsureChannelFirstd(keys=keys),
        mt.CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
        mt.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]
    if spacing:  # as ours, which resamples only when given a spacing
        steps.append(mt.Spacingd(keys=keys, pixdim=tuple(spacing), mode=("bilinear", "nearest")))
    return mt.Compose(steps)


def monai(cases: Sequence[CaseFiles], out: Path, transform) -> list[tuple]:
    """MONAI's preprocessing (``transform``, :func:`monai_transform`) of ``cases`` into ``.npy`` files
    under ``out``; the written image shapes ``(C, x, y, z)``."""
    out.mkdir(parents=True, exist_ok=True)
    shapes = []
    for case in cases:
        data = transform({"image": [str(case.images[m]) for m in MODALITIES], "label": str(case.label)})
        image = np.asarray(data["image"], dtype=np.float32)
        np.save(out / f"{case.case_id}_image.npy", image)
        np.save(out / f"{case.case_id}_label.npy", np.asarray(data["label"][0], dtype=np.uint8))
        shapes.append(image.shape)
    return shapes


def read_all(paths: Sequence[Path]) -> None:
    """nibabel's ``get_fdata`` (float32) of every file."""
    for path in paths:
        nib.load(str(path)).get_fdata(dtype=np.float32)


def decompressed(paths: Sequence[Path], folder: Path) -> list[Path]:
    """``.nii`` copies of the ``.nii.gz`` files in ``folder``."""
    out = []
    for path in paths:
        target = folder / path.name.removesuffix(".gz")
        with gzip.open(path, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        out.append(target)
    return out


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(1)
    cases = find_cases(args.root, args.cases)
    base = {"cases": len(cases), "spacing": "original" if args.spacing is None else "x".join(map(str, args.spacing)),
            "repeats": args.repeats}
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        counter = iter(range(10**6))

        def fresh() -> Path:
            return Path(tmp) / f"out{next(counter)}"

        def row(name: str, workers: int, timing) -> dict:
            return {"pipeline": name, "workers": workers, **base, "s_per_case": timing.wall / len(cases),
                    "cases_per_min": 60 * len(cases) / timing.wall, "cpu_s_per_case": timing.cpu / len(cases),
                    "runs_s": timing.runs_text()}

        ours_per_case = {}
        for workers in args.workers:
            timing = median_seconds(lambda w=workers: ours(cases, fresh(), args.spacing, w), args.repeats)
            ours_per_case[workers] = timing.wall / len(cases)
            rows.append(row("ours", workers, timing))
            print(rows[-1], flush=True)
        transform = monai_transform(args.spacing)  # built (and MONAI imported) outside the timing
        rows.append(row("monai", 1, median_seconds(lambda: monai(cases, fresh(), transform), args.repeats)))
        print(rows[-1], flush=True)

        sources = [p for c in cases for p in c.sources()]
        plain = decompressed(sources, Path(tmp))
        gz, raw = (median_seconds(lambda paths=paths: read_all(paths), args.repeats) for paths in (sources, plain))
        reference = ours_per_case[min(ours_per_case)]
        rows.append({"pipeline": "gzip", "workers": 1, **base, "read_gz_s_per_case": gz.wall / len(cases),
                     "read_nii_s_per_case": raw.wall / len(cases), "gzip_s_per_case": (gz.wall - raw.wall) / len(cases),
                     "gzip_share": (gz.wall - raw.wall) / len(cases) / reference,
                     "gzip_cpu_share": (gz.cpu - raw.cpu) / len(cases) / rows[0]["cpu_s_per_case"],
                     "runs_s": f"gz {gz.runs_text()}; nii {raw.runs_text()}"})
        print(rows[-1], flush=True)
    return rows


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/brats2018", help="BraTS 2018-2020 cases (.nii.gz)")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="our preprocessing processes")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, help="mm; default: the original grid")
    parser.add_argument("--tmp", default=None, help="folder for the temporary outputs (default: the system's)")
    parser.add_argument("--csv", default="experiments/benchmarks/preprocessing.csv")
    parser.add_argument("--tiny", action="store_true", help="1 case, 1 repeat, 1 worker")
    args = parser.parse_args(argv)
    if args.tiny:
        args.cases, args.repeats, args.workers = 1, 1, [1]
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse(argv)
    rows = run(args)
    report(rows, args.csv, f"Preprocessing, raw .nii.gz to cache ({args.cases} cases)", machine())
    return rows


if __name__ == "__main__":
    main()
