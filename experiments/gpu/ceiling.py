"""The plain-loop ceiling of an experiment's network: seconds per training step with no loader and no
Lightning, FLOPs per step, the device's measured matrix rate and peak memory, written as one JSON file.

Usage:
    python experiments/gpu/ceiling.py --experiment brats_nnunet --json out.json [--device cuda] [--steps 20]
        [--warmup 3] [--override model.net.base_filters=4 ...]

The loop is :func:`experiments.benchmarks.loop_overhead.plain_loop` (imported, not rewritten) on the
batches of :func:`~loop_overhead.make_batches` (random images, binary targets, the experiment's
``data.batch_size`` x modalities x ``data.patch_size``), moved to the device beforehand. The network,
its training loss (deep supervision included) and the optimiser and LR schedule are the module's own
(:class:`~lightning_brats.training.module.SegmentationModule` built from ``cfg.model``); the precision is what
``trainer.precision=auto`` chooses on that device (:func:`lightning_brats.training.hardware.resolve_precision`),
as autocast; ``cudnn.benchmark`` is on. Since a GPU runs queued work asynchronously, the time is the
whole timed run (synchronised at both ends) divided by its steps, after ``--warmup`` untimed steps.

- FLOPs of one step: forward and backward of the network on meta tensors (no memory, no compute),
  counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions only:
  what the chip's matrix units do).
- The chip's rate: square matrix products in the training dtype (bf16 under bf16-mixed, fp16 under
  16-mixed, else fp32), the best of a few timed runs: a measured rate, not the datasheet's.
- Peak memory: ``torch.cuda.max_memory_allocated`` over the timed run (CUDA only; ``null`` on a CPU).

The JSON holds ``experiment``, ``device``, ``precision``, ``batch``, ``steps``, ``s_per_step``,
``volumes_per_s``, ``flops_per_step``, ``achieved_tflops``, ``peak_tflops``, ``chip_share`` and
``peak_memory_gib``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[2]
# this checkout's package first (not an installed or editable one of another checkout), and the benchmarks
sys.path[:0] = [str(REPO), str(REPO / "experiments" / "benchmarks")]
from common import compose
from loop_overhead import make_batches, plain_loop

from lightning_brats.training.callbacks.step_timer import measure_matmul_tflops, precision_dtype
from lightning_brats.training.hardware import resolve_precision


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sum_outputs(out) -> torch.Tensor:
    """One scalar from a network's output: a tensor, or a list/tuple of them (deep supervision)."""
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    return sum(o.float().sum() for o in out)


def flops_per_step(cfg) -> int:
    """FLOPs of one training step (forward + backward) of ``cfg.model.net`` on one batch of the
    experiment's shape, counted on meta tensors (matrix products and convolutions only)."""
    shape = (int(cfg.data.batch_size), len(cfg.data.preprocessing.modalities), *cfg.data.patch_size)
    with torch.device("meta"):
        net = hydra.utils.instantiate(cfg.model.net)
    net.train()
    image = torch.empty(shape, device="meta", requires_grad=False)
    with FlopCounterMode(display=False) as counter:
        _sum_outputs(net(image)).backward()
    return int(counter.get_total_flops())


def measure(experiment: str, overrides: Sequence[str] = (), device: str = "auto", steps: int = 20,
            warmup: int = 3) -> dict:
    """Train ``experiment``'s network for ``warmup`` + ``steps`` steps in the plain loop on ``device``;
    the figures described in the module docstring."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = compose([f"experiment={experiment}", "data.root=unused", *overrides])
    precision, reason = resolve_precision(cfg.trainer.precision, "gpu" if dev.type == "cuda" else "cpu")
    dtype = precision_dtype(precision)  # float32: no autocast
    torch.manual_seed(0)
    module = hydra.utils.instantiate(cfg.model)
    net = module.net.to(dev)
    optimizer = module.optimizer_factory(params=net.parameters())
    scheduler = module.scheduler_factory(optimizer=optimizer)
    batches = [{k: v.to(dev) for k, v in b.items()} for b in make_batches(cfg, warmup + steps)]
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype is not torch.float32 else contextlib.nullcontext()
    with autocast:
        plain_loop(net, module.train_loss, optimizer, scheduler, batches[:warmup])
        sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        plain_loop(net, module.train_loss, optimizer, scheduler, batches[warmup:])
        sync(dev)
        seconds = (time.perf_counter() - start) / steps
    flops = flops_per_step(cfg)
    peak = measure_matmul_tflops(dev, dtype)
    achieved = flops / seconds / 1e12
    return {
        "experiment": experiment, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": precision, "precision_reason": reason, "model": str(cfg.model.name),
        "batch": "x".join(map(str, (cfg.data.batch_size, len(cfg.data.preprocessing.modalities), *cfg.data.patch_size))),
        "steps": steps, "warmup": warmup, "s_per_step": seconds, "volumes_per_s": int(cfg.data.batch_size) / seconds,
        "flops_per_step": flops, "achieved_tflops": achieved, "peak_tflops": peak, "chip_share": achieved / peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="a conf/experiment preset, e.g. brats_nnunet")
    parser.add_argument("--json", required=True, help="where the figures are written")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda | cuda:1")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides (e.g. tiny sizes)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0 (got {args.steps}, {args.warmup})")
    result = measure(args.experiment, args.override, args.device, args.steps, args.warmup)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
