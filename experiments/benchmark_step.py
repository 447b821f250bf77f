"""Time one training step (forward + backward + AdamW) of the U-Net on this machine's CPU.

Usage:
    python experiments/benchmark_step.py [--repeats 5]

Prints a Markdown table: dims, patch, batch, base filters, depth, precision, parameters,
seconds per step (median of ``--repeats`` after one warm-up step). Record the table in
experiments/README.md with the machine it ran on and whether tcmalloc was preloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lightning_brats.models import UNet
from lightning_brats.training.losses import DiceBCELoss

CONFIGS = [
    # dims, patch, batch, base, depth, precision
    (3, (64, 64, 64), 2, 16, 4, "32"),
    (3, (64, 64, 64), 2, 16, 4, "bf16"),
    (3, (64, 64, 64), 2, 8, 4, "32"),
    (3, (48, 48, 48), 4, 16, 4, "32"),
    (3, (96, 96, 96), 1, 16, 4, "32"),
    (2, (96, 96), 16, 32, 5, "32"),
    (2, (96, 96), 16, 16, 5, "32"),
    (2, (96, 96), 16, 32, 5, "bf16"),
]


def time_step(dims, patch, batch, base, depth, precision, repeats) -> tuple[int, float]:
    torch.manual_seed(0)
    net = UNet(dims, 4, 3, depth=depth, base_filters=base)
    loss_fn = DiceBCELoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 4, *patch)
    y = (torch.rand(batch, 3, *patch) > 0.9).float()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(net(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    return sum(p.numel() for p in net.parameters()), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}")
    print("| dims | patch | batch | base | depth | precision | params (M) | s/step | voxels/s (M) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dims, patch, batch, base, depth, precision in CONFIGS:
        params, seconds = time_step(dims, patch, batch, base, depth, precision, args.repeats)
        voxels = batch * torch.tensor(patch).prod().item()
        print(
            f"| {dims}D | {'x'.join(map(str, patch))} | {batch} | {base} | {depth} | {precision} "
            f"| {params / 1e6:.2f} | {seconds:.2f} | {voxels / seconds / 1e6:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
