"""Training loop overhead: seconds per step of the Lightning module against a plain PyTorch loop with
the same network, loss, optimiser, LR schedule and batches.

Usage:
    python experiments/benchmarks/loop_overhead.py [--experiments brats_cpu brats_cpu_3d] [--steps 8]
        [--repeats 3] [--csv experiments/benchmarks/loop_overhead.csv]
    python experiments/benchmarks/loop_overhead.py --tiny     # tiny 3D network, 32^3 patches, 4 steps, 1 repeat

Each ``--experiments`` preset gives the model (``model.net``, ``model.loss``, ``model.optimizer``,
``model.scheduler``: :class:`~lightning_brats.training.schedules.PolyLRByProgress` over the timed run's steps) and
the batch (``data.batch_size`` x 4 x ``data.patch_size``, 3 region targets). The batches are made
beforehand and held in memory (random images, binary targets: the cost of a step does not depend on
the values), so no data loading is timed. Both loops start from the same weights.

- ``plain``: ``for batch in batches``: forward, loss, ``zero_grad``, backward, optimiser step, LR step.
- ``lightning``: :class:`~lightning_brats.training.module.SegmentationModule` fitted by a ``Trainer`` (CPU, one
  device, fp32, no logger, checkpoint, progress bar, validation or sanity check) on a ``DataLoader``
  over the same batch list (``batch_size=None``); its training step logs ``train/loss`` as in training.

A step is the time from one batch's start to the next (Lightning: ``on_train_batch_start``), so
whatever a loop does between steps is counted; the first ``--warmup`` steps are left out. Each loop
runs ``--repeats`` times, alternating; the figure is the median over runs of each run's median step,
in wall seconds and in CPU seconds of the process (less disturbed by other jobs on a shared core).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TINY_3D_OVERRIDES, compose, machine, report

from lightning_brats.training.module import SegmentationModule


def make_batches(cfg, count: int, seed: int = 0) -> list[dict]:
    """``count`` batches of the experiment's shape: ``image (B, C, *patch)`` normal, ``target (B, R, *patch)`` binary."""
    generator = torch.Generator().manual_seed(seed)
    shape = (int(cfg.data.batch_size), len(cfg.data.preprocessing.modalities), *cfg.data.patch_size)
    regions = len(cfg.data.release.regions)
    return [{"image": torch.randn(shape, generator=generator),
             "target": (torch.rand((shape[0], regions, *shape[2:]), generator=generator) > 0.9).float()}
            for _ in range(count)]


def plain_loop(net: torch.nn.Module, loss_fn, optimizer, scheduler, batches: Sequence[dict],
               memory_format: torch.memory_format | None = None) -> list[float]:
    """Train on ``batches`` in a plain loop; per step ``(wall, process CPU)`` seconds from its start to the
    next's (the last step to its end). ``memory_format``: the inputs' (the network's must be set by the caller)."""
    net.train()
    starts = []
    for i, batch in enumerate(batches):
        starts.append(_now())
        image = batch["image"] if memory_format is None else batch["image"].contiguous(memory_format=memory_format)
        loss = loss_fn(net(image), batch["target"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.progress = (i + 1) / len(batches)
            scheduler.step()
    starts.append(_now())
    return _steps(starts)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _steps(starts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in pairwise(starts)]


class _StepClock(pl.Callback):
    """Times from each training batch's start to the next's (the last to the end of fit)."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.starts.append(_now())

    def on_train_end(self, trainer, module) -> None:
        self.starts.append(_now())

    @property
    def steps(self) -> list[tuple[float, float]]:
        return _steps(self.starts)


def network(cfg, state: dict) -> torch.nn.Module:
    """The experiment's network with the weights ``state``."""
    net = hydra.utils.instantiate(cfg.model.net)
    net.load_state_dict(state)
    return net


def lightning_loop(cfg, net: torch.nn.Module, batches: Sequence[dict]) -> list[tuple[float, float]]:
    """Fit the experiment's :class:`SegmentationModule` around ``net`` (trained in place) on ``batches``;
    per step ``(wall, process CPU)`` seconds."""
    # the module takes the data settings at construction, so it needs no datamodule here
    module = SegmentationModule(net=net, loss=hydra.utils.instantiate(cfg.model.loss),
                                optimizer=hydra.utils.instantiate(cfg.model.optimizer),
                                scheduler=hydra.utils.instantiate(cfg.model.scheduler), inference=cfg.inference,
                                regions=dict(cfg.data.release.regions), modalities=list(cfg.data.preprocessing.modalities),
                                patch_size=list(cfg.data.patch_size), sampling=cfg.data.sampling,
                                batch_size=cfg.data.batch_size, name=cfg.model.name)
    clock = _StepClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="32", max_steps=len(batches), max_epochs=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock])
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return clock.steps


def plain_run(cfg, net: torch.nn.Module, batches: Sequence[dict]) -> list[tuple[float, float]]:
    """The plain loop training ``net`` in place with the experiment's loss, optimiser and schedule."""
    optimizer = hydra.utils.instantiate(cfg.model.optimizer)(params=net.parameters())
    scheduler = hydra.utils.instantiate(cfg.model.scheduler)(optimizer=optimizer)
    return plain_loop(net, hydra.utils.instantiate(cfg.model.loss), optimizer, scheduler, batches)


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, verbose=False)
    rows = []
    for experiment in args.experiments:
        cfg = compose([f"experiment={experiment}", "data.root=unused", *args.override])
        batches = make_batches(cfg, args.warmup + args.steps)
        torch.manual_seed(0)
        state = hydra.utils.instantiate(cfg.model.net).state_dict()
        walls, cpus = {"plain": [], "lightning": []}, {"plain": [], "lightning": []}
        for _ in range(args.repeats):
            for name, loop in (("plain", plain_run), ("lightning", lightning_loop)):
                steps = loop(cfg, network(cfg, state), batches)[args.warmup:]
                walls[name].append(statistics.median(s[0] for s in steps))
                cpus[name].append(statistics.median(s[1] for s in steps))
        wall = {n: statistics.median(v) for n, v in walls.items()}
        cpu = {n: statistics.median(v) for n, v in cpus.items()}
        for name in ("plain", "lightning"):
            rows.append({"experiment": experiment, "loop": name, "model": cfg.model.name,
                         "batch": "x".join(map(str, (cfg.data.batch_size, len(cfg.data.preprocessing.modalities), *cfg.data.patch_size))),
                         "s_per_step": wall[name], "vs_plain": wall[name] / wall["plain"] - 1,
                         "cpu_s_per_step": cpu[name], "cpu_vs_plain": cpu[name] / cpu["plain"] - 1,
                         "steps": args.steps, "repeats": args.repeats,
                         "run_medians_s": " ".join(f"{m:.3g}" for m in walls[name])})
            print(rows[-1], flush=True)
    return rows


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=["brats_cpu", "brats_cpu_3d"], help="conf/experiment presets")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides for every experiment")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--csv", default="experiments/benchmarks/loop_overhead.csv")
    parser.add_argument("--tiny", action="store_true", help="3D U-Net of 4 base filters, batch 2 of 32^3, 3 steps, 1 repeat")
    args = parser.parse_args(argv)
    if args.tiny:
        args.experiments, args.steps, args.warmup, args.repeats = ["brats_cpu_3d"], 3, 1, 1
        args.override = [*TINY_3D_OVERRIDES, *args.override]
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse(argv)
    rows = run(args)
    report(rows, args.csv, "Training loop: Lightning module vs plain PyTorch (batches in memory)", machine())
    return rows


if __name__ == "__main__":
    main()
