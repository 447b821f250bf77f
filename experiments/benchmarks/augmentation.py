"""Augmentation per sample: the CPU path (per sample, NumPy + one-sample ``grid_sample``) against the batch
path (:class:`~lightning_brats.data.batch_augment.BatchAugmentation`, whole batches in torch).

Usage:
    python experiments/benchmarks/augmentation.py [--device cpu] [--repeats 3] [--intensity-set nnunet]
        [--csv experiments/benchmarks/augmentation.csv]
    python experiments/benchmarks/augmentation.py --tiny     # seconds: small patches, 1 repeat

Times milliseconds per sample for 3D batches of 2 x 4 x 128^3 and 2D batches of 32 x 4 x 224^2
(targets 3 regions), with the default settings (rotation and scaling with p 0.2) and with the
rotation and scaling always applied (``spatial_prob=1``, the resampling's cost). Inputs are random
images and binary targets: the transforms' cost does not depend on the values. On a GPU
(``--device cuda``) the batch path runs there with no CPU in the loop (timed with synchronisation);
the CPU path always runs on the CPU, as in the loader workers. Each path draws its transforms as
in training (so a figure is the mean over ``--repeats`` batches of random draws: small repeats
give noisy means at ``spatial_prob=0.2``). ``--intensity-set nnunet`` adds nnU-Net's intensity
augmentations with its probabilities (``augment=nnunet``) to both paths; ``--elastic-prob 1`` adds the
elastic deformation (default ranges) to every sample, in the same resampling. Prints a rich table and writes a CSV.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report, sync

from lightning_brats.data.batch_augment import BatchAugmentation
from lightning_brats.data.intensity_augment import NNUNET_PROBABILITIES
from lightning_brats.data.sampling import Augmentation

INTENSITY_SETS = {"none": {}, "nnunet": NNUNET_PROBABILITIES}


def time_cpu_path(
    image: np.ndarray, target: np.ndarray, spatial_prob: float, repeats: int, intensity_set: str = "none",
    elastic_prob: float = 0.0,
) -> float:
    """Mean seconds per sample of :class:`Augmentation` over ``repeats`` passes through the batch's
    samples, one after another (each its own draw), including the contiguous copy the dataset makes."""
    augment = Augmentation(spatial_prob=spatial_prob, elastic_prob=elastic_prob, **INTENSITY_SETS[intensity_set])
    start = time.perf_counter()
    for r in range(repeats):
        for b in range(len(image)):
            out = augment(image[b], target[b], np.random.default_rng((r, b)))
            np.ascontiguousarray(out[0]), np.ascontiguousarray(out[1])
    return (time.perf_counter() - start) / (repeats * len(image))


def time_batch_path(
    image: torch.Tensor, target: torch.Tensor, spatial_prob: float, repeats: int, intensity_set: str = "none",
    elastic_prob: float = 0.0,
) -> float:
    """Mean seconds per sample of :class:`BatchAugmentation` over ``repeats`` batches (after one warm-up batch)."""
    augment = BatchAugmentation(spatial_prob=spatial_prob, elastic_prob=elastic_prob, **INTENSITY_SETS[intensity_set])
    generator = torch.Generator(device=image.device).manual_seed(0)
    augment(image, target, generator)
    sync(image.device)
    start = time.perf_counter()
    for _ in range(repeats):
        augment(image, target, generator)
    sync(image.device)
    return (time.perf_counter() - start) / (repeats * len(image))


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    rows = []
    for dims, patch, batch in ((3, args.patch3d, args.batch3d), (2, args.patch2d, args.batch2d)):
        image = rng.normal(size=(batch, 4, *patch)).astype(np.float32)
        target = (rng.random((batch, 3, *patch)) > 0.9).astype(np.float32)
        for spatial_prob in (0.2, 1.0):
            cpu = time_cpu_path(image, target, spatial_prob, args.repeats, args.intensity_set, args.elastic_prob)
            on_device = time_batch_path(torch.from_numpy(image).to(device), torch.from_numpy(target).to(device),
                                        spatial_prob, args.repeats, args.intensity_set, args.elastic_prob)
            row = {"dims": dims, "patch": "x".join(map(str, patch)), "batch": batch, "spatial_prob": spatial_prob,
                   "intensity_set": args.intensity_set, "elastic_prob": args.elastic_prob,
                   "cpu_ms_per_sample": 1e3 * cpu, f"batch_{device.type}_ms_per_sample": 1e3 * on_device,
                   "speedup": cpu / on_device, "threads": torch.get_num_threads()}
            rows.append(row)
            print(row, flush=True)
    return rows


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where the batch path runs (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--intensity-set", choices=sorted(INTENSITY_SETS), default="none",
                        help="nnunet: add nnU-Net's intensity augmentations (augment=nnunet) to both paths")
    parser.add_argument("--elastic-prob", type=float, default=0.0,
                        help="probability of the elastic deformation on both paths (default ranges)")
    parser.add_argument("--patch3d", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--batch3d", type=int, default=2)
    parser.add_argument("--patch2d", type=int, nargs=2, default=[224, 224])
    parser.add_argument("--batch2d", type=int, default=32)
    parser.add_argument("--csv", default="experiments/benchmarks/augmentation.csv")
    parser.add_argument("--tiny", action="store_true", help="32^3 and 8 x 48^2 patches, 1 repeat")
    args = parser.parse_args(argv)
    if args.tiny:
        args.patch3d, args.patch2d, args.batch2d, args.repeats = [32, 32, 32], [48, 48], 8, 1
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse(argv)
    rows = run(args)
    report(rows, args.csv, f"Augmentation per sample: CPU path vs batch path on {args.device}")
    return rows


if __name__ == "__main__":
    main()
