"""Training step of the 2D and 3D U-Net: eager against ``channels_last`` / ``channels_last_3d`` memory
format and ``torch.compile``.

Usage:
    python experiments/benchmarks/step_variants.py [--experiments brats_cpu brats_cpu_3d]
        [--variants eager channels_last compile channels_last+compile] [--steps 3] [--repeats 3]
        [--csv experiments/benchmarks/step_variants.csv]
    python experiments/benchmarks/step_variants.py --tiny    # tiny 3D network, eager and channels_last, 1 repeat

Each ``--experiments`` preset gives the network, loss, optimiser and batch shape (as
``loop_overhead.py``, whose plain loop this uses, with in-memory batches and the same initial weights).
``channels_last`` puts the network's weights and each batch in ``torch.channels_last`` (2D) or
``torch.channels_last_3d`` (3D); ``compile`` wraps the network in ``torch.compile`` (inductor). The
first ``--warmup`` steps (compilation included) are timed apart (``warmup_s``); then ``--repeats``
runs of ``--steps`` steps, and the median run's seconds per step.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TINY_3D_OVERRIDES, compose, machine, median_seconds, report
from loop_overhead import make_batches, network, plain_loop

VARIANTS = ("eager", "channels_last", "compile", "channels_last+compile")


def memory_format(dims: int) -> torch.memory_format:
    """``channels_last`` for 4D (2D images) and ``channels_last_3d`` for 5D (3D volumes) tensors."""
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def build(cfg, state: dict, variant: str):
    """The network (weights ``state``) in the variant's format, compiled or not; its optimiser and loss."""
    net = network(cfg, state)
    fmt = memory_format(len(cfg.data.patch_size)) if "channels_last" in variant else None
    if fmt is not None:
        net = net.to(memory_format=fmt)
    optimizer = hydra.utils.instantiate(cfg.model.optimizer)(params=net.parameters())
    if "compile" in variant:
        # each variant compiles afresh: TorchDynamo's cache is per code object (UNet.forward), and a
        # third compilation of it would switch to dynamic shapes (which failed in inductor for the 3D U-Net)
        torch._dynamo.reset()
    model = torch.compile(net) if "compile" in variant else net
    return model, optimizer, hydra.utils.instantiate(cfg.model.loss), fmt


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    rows = []
    for experiment in args.experiments:
        cfg = compose([f"experiment={experiment}", "data.root=unused", *args.override])
        batches = make_batches(cfg, max(args.steps, args.warmup))
        torch.manual_seed(0)
        state = hydra.utils.instantiate(cfg.model.net).state_dict()
        eager = None
        for variant in args.variants:
            model, optimizer, loss_fn, fmt = build(cfg, state, variant)
            start = time.perf_counter()
            try:
                plain_loop(model, loss_fn, optimizer, None, batches[:args.warmup], fmt)
            except Exception as exc:  # noqa: BLE001  (a compiler failure is a result here, not the end of the run)
                rows.append({"experiment": experiment, "model": cfg.model.name, "variant": variant,
                             "note": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"})
                print(rows[-1], flush=True)
                continue
            warmup = time.perf_counter() - start
            timed = batches[:args.steps]
            timing = median_seconds(
                lambda m=model, f=loss_fn, o=optimizer, b=timed, x=fmt: plain_loop(m, f, o, None, b, x), args.repeats
            )
            per_step = timing.wall / args.steps
            eager = per_step if variant == "eager" else eager
            rows.append({"experiment": experiment, "model": cfg.model.name, "variant": variant,
                         "batch": "x".join(map(str, (cfg.data.batch_size, len(cfg.data.preprocessing.modalities), *cfg.data.patch_size))),
                         "s_per_step": per_step, "cpu_s_per_step": timing.cpu / args.steps,
                         "vs_eager": per_step / eager - 1 if eager else "", "warmup_s": warmup,
                         "steps": args.steps, "repeats": args.repeats, "runs_s": timing.runs_text()})
            print(rows[-1], flush=True)
    return rows


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=["brats_cpu", "brats_cpu_3d"], help="conf/experiment presets")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides for every experiment")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed run")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the timed runs (compilation happens here)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--csv", default="experiments/benchmarks/step_variants.csv")
    parser.add_argument("--tiny", action="store_true", help="3D U-Net of 4 base filters, batch 2 of 32^3, eager and channels_last")
    args = parser.parse_args(argv)
    if args.tiny:
        args.experiments, args.variants, args.steps, args.warmup, args.repeats = ["brats_cpu_3d"], ["eager", "channels_last"], 1, 1, 1
        args.override = [*TINY_3D_OVERRIDES, *args.override]
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse(argv)
    rows = run(args)
    report(rows, args.csv, "Training step: memory format and torch.compile", machine())
    return rows


if __name__ == "__main__":
    main()
