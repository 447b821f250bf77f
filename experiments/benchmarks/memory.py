"""Memory as the dataset grows: peak resident memory of training steps with 20, 100 and 400 cases,
with 0 and 2 loader workers.

Usage:
    python experiments/benchmarks/memory.py --root ../shared/data/brats2018 [--sizes 20 100 400]
        [--workers 0 2] [--steps 6] [--repeats 3] [--csv experiments/benchmarks/memory.csv]
    python experiments/benchmarks/memory.py --tiny ...   # 2 sources, sizes 4 and 16, 0 workers, 2 steps

The first ``--sources`` real cases are preprocessed once (``--spacing``, default 2 mm as
``experiment=brats_cpu``); a temporary cache folder then holds ``size`` entries, entry ``i`` being
symbolic links to the arrays of source ``i % sources`` under a new case ID (with its own record), so
the cache looks like a dataset of ``size`` cases while the disk holds only the sources. Each setting
runs in a fresh Python process: :meth:`PreprocessedCache.load` of every entry (memory-mapped), a
:class:`~lightning_brats.data.sampling.TrainingSampleDataset` (3D patches, foreground oversampling,
CPU augmentation) in a ``DataLoader`` (``--workers``, persistent), and ``--steps`` training steps of a
small 3D U-Net. At the end it reads, from ``/proc``:

- ``main_peak_mib``: the main process's peak resident set (``VmHWM``);
- ``workers_peak_mib``: the sum of the workers' peaks (forked workers share the parent's pages, each
  counts them: an upper bound);
- ``pss_mib``: main and workers' proportional set size now (shared pages split between the
  processes sharing them: what they hold together);
- ``main_anon_mib`` / ``main_file_mib``: the main process's resident memory now, anonymous (its own
  heap) and file-backed (mapped files: libraries and the touched pages of the memory-mapped cache,
  page cache the kernel can drop);
- ``dataset_index_mib``: what the dataset holds in memory for all cases (its foreground-voxel index arrays).

Each figure is the median over ``--repeats`` processes. Prints a rich table and writes a CSV.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, report

MODALITIES = ("flair", "t1", "t1ce", "t2")
LABELS = {"ncr_net": 1, "ed": 2, "et": 4}
REGIONS = {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}


def _settings(spacing):
    from lightning_brats.data.settings import PreprocessingSettings

    return PreprocessingSettings(MODALITIES, None if spacing is None else tuple(spacing))


def build_sources(root: str | Path, count: int, cache_dir: Path, spacing) -> tuple[Path, list[str]]:
    """Preprocess the first ``count`` cases under ``root`` into ``cache_dir``; (cache folder, case IDs)."""
    from lightning_brats.data.layouts import BratsLayout
    from lightning_brats.data.preprocess import PreprocessedCache

    layout = BratsLayout({m: f"_{m}" for m in MODALITIES}, "_seg", [".nii.gz", ".nii"])
    files = sorted(layout.find_cases(Path(root)), key=lambda c: c.case_id)[:count]
    cache = PreprocessedCache(cache_dir, "sources", _settings(spacing), LABELS)
    cache.ensure(files, log=lambda *_: None)
    return cache.path, [f.case_id for f in files]


def replicate(sources: Path, ids: Sequence[str], size: int, folder: Path) -> list[str]:
    """A cache folder of ``size`` entries: symbolic links to the sources' arrays under new IDs, each with
    its own record. Returns the new IDs."""
    folder.mkdir(parents=True, exist_ok=True)
    new_ids = []
    for i in range(size):
        source, case_id = ids[i % len(ids)], f"replica_{i:04d}"
        for kind in ("image", "label"):
            (folder / f"{case_id}_{kind}.npy").symlink_to(sources / f"{source}_{kind}.npy")
        record = json.loads((sources / f"{source}.json").read_text())
        record["case_id"] = case_id
        (folder / f"{case_id}.json").write_text(json.dumps(record))
        new_ids.append(case_id)
    return new_ids


def _mib_from_status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(folder: Path, ids: Sequence[str], workers: int, steps: int, patch: Sequence[int], batch: int) -> dict:
    """One setting in this (fresh) process: load the cache, train ``steps`` steps, read /proc."""
    import os

    import torch
    from torch.utils.data import DataLoader

    from lightning_brats.data.preprocess import PreprocessedCache
    from lightning_brats.data.sampling import Augmentation, EpochSampler, TrainingSampleDataset
    from lightning_brats.models import UNet
    from lightning_brats.training.losses import DiceBCELoss

    torch.set_num_threads(1)
    cache = PreprocessedCache(folder.parent, "x", _settings(None), LABELS)
    cache.path = folder  # the replicated folder (its name holds no fingerprint)
    cases = [cache.load(i) for i in ids]
    dataset = TrainingSampleDataset(cases, REGIONS, patch, batch, 0.33, Augmentation(), seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=EpochSampler(batch * steps), num_workers=workers,
                        persistent_workers=workers > 0, drop_last=True)
    torch.manual_seed(0)
    net = UNet(3, len(MODALITIES), len(REGIONS), depth=3, base_filters=4)
    optimizer = torch.optim.AdamW(net.parameters())
    loss_fn = DiceBCELoss()
    iterator = iter(loader)
    for batch_data in iterator:
        loss = loss_fn(net(batch_data["image"]), batch_data["target"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pids = [w.pid for w in getattr(iterator, "_workers", [])]
    result = {
        "main_peak_mib": _mib_from_status(os.getpid(), "VmHWM"),
        "workers_peak_mib": sum(_mib_from_status(p, "VmHWM") for p in pids),
        "pss_mib": _pss_mib(os.getpid()) + sum(_pss_mib(p) for p in pids),
        "main_anon_mib": _mib_from_status(os.getpid(), "RssAnon"),
        "main_file_mib": _mib_from_status(os.getpid(), "RssFile"),
        "dataset_index_mib": sum(voxels.nbytes for classes in dataset.foreground for voxels in classes) / 2**20,
        "cache_image_type": type(cases[0].image).__name__,
    }
    del iterator
    return result


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        sources, ids = build_sources(args.root, args.sources, Path(tmp) / "sources", args.spacing)
        for size in args.sizes:
            folder = Path(tmp) / f"cache_{size}"
            new_ids = replicate(sources, ids, size, folder)
            (folder / "ids.json").write_text(json.dumps(new_ids))
            for workers in args.workers:
                runs = []
                for _ in range(args.repeats):
                    command = [sys.executable, __file__, "--child", str(folder), "--child-workers", str(workers),
                               "--steps", str(args.steps), "--patch", *map(str, args.patch), "--batch", str(args.batch)]
                    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                    runs.append(json.loads(out.strip().splitlines()[-1]))
                row = {"cases": size, "workers": workers, "sources": len(ids), "steps": args.steps,
                       "patch": "x".join(map(str, args.patch)), "batch": args.batch, "repeats": args.repeats}
                for key in ("main_peak_mib", "workers_peak_mib", "pss_mib", "main_anon_mib", "main_file_mib",
                            "dataset_index_mib"):
                    row[key] = statistics.median(r[key] for r in runs)
                row["main_peak_runs"] = " ".join(f"{r['main_peak_mib']:.0f}" for r in runs)
                row["cache_image_type"] = runs[0]["cache_image_type"]
                rows.append(row)
                print(row, flush=True)
            shutil.rmtree(folder)
    return rows


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/brats2018")
    parser.add_argument("--sources", type=int, default=4, help="real cases preprocessed and replicated")
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.0, 2.0, 2.0], help="mm")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100, 400], help="cases in the replicated cache")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 48, 48])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="folder for the temporary caches (default: the system's)")
    parser.add_argument("--csv", default="experiments/benchmarks/memory.csv")
    parser.add_argument("--tiny", action="store_true", help="2 sources at 4 mm, 4 and 16 cases, 0 workers, 2 steps, 1 repeat")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.sources, args.spacing, args.sizes, args.workers = 2, [4.0, 4.0, 4.0], [4, 16], [0]
        args.steps, args.patch, args.repeats = 2, [16, 16, 16], 1
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse(argv)
    if args.child:
        folder = Path(args.child)
        ids = json.loads((folder / "ids.json").read_text())
        print(json.dumps(child(folder, ids, args.child_workers, args.steps, args.patch, args.batch)), flush=True)
        return []
    rows = run(args)
    report(rows, args.csv, "Peak memory of training steps as the dataset grows", machine())
    return rows


if __name__ == "__main__":
    main()
