"""Training step time against data-wait time, and how much of the chip a run uses."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 10,
                          rounds: int = 3) -> float:
    """The device's matrix-multiply rate in TFLOP/s: the best of ``rounds`` rounds of ``repeats``
    products of two ``size x size`` matrices of ``dtype``, after a warm-up product (the rate a well-fed
    convolution can approach).

    Args:
        device: where to measure (``cuda`` devices are synchronised around each timed round).
        dtype: ``torch.bfloat16``, ``torch.float16`` or ``torch.float32``: the training precision's.
        size: matrix side; default 8192 on CUDA, 1024 on a CPU.
        repeats: products per round.
        rounds: timed rounds; the fastest counts.
    """
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b
    sync()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best / 1e12


def precision_dtype(precision: str) -> torch.dtype:
    """The matrix dtype of a Lightning precision: ``bf16-*`` -> bfloat16, ``16-*`` -> float16, else float32."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


class StepTimer(pl.Callback):
    """Time the training steps and the wait for data, as nnU-Net's benchmark trainers do, and the share
    of the device's matrix rate the run reaches.

    nnU-Net compares a run with data loading (``nnUNetTrainerBenchmark_5epochs``) against one that
    trains on a fixed batch (``..._noDataLoading``). Here one run measures both, over a *timed window*
    from the start of step ``skip`` to the end of the last step:

    - *wall*: the window's wall-clock time (the device is synchronised once at each end of the window,
      never per step, so the host keeps queueing work as in an untimed run);
    - *step*: each step from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward,
      optimiser), on CUDA timed by CUDA events on the device's stream, on a CPU by the host clock;
    - steps/s with data = steps / wall; steps/s without data = steps / sum of steps; data wait share =
      1 - sum of steps / wall (the time the device was not running a training step: loading, the
      transfer, the batch augmentation of ``data.augment.device=batch``, host stalls). All three come
      from the same totals, so they agree. Medians of the per-step times are reported beside them.

    FLOPs of one training step are counted once (``torch.utils.flop_counter`` on the first step, not
    timed; not under ``model.compile``), and the device's matrix rate in the training precision is
    measured at the end (:func:`measure_matmul_tflops`) unless ``peak_tflops`` gives it.

    Args:
        skip: the first steps left out (warm-up: worker start, allocator, cuDNN autotuning, compilation).
        dirpath: where ``step_times.json`` is written at the end of training (``None``: not written).
        count_flops: count one step's FLOPs.
        peak_tflops: the device's rate to compare with, in TFLOP/s; ``None``: measured.

    At the end of training the summary is logged, sent to the loggers as ``benchmark/*`` and kept in
    :attr:`summary` (keys: ``steps_timed``, ``step_s``, ``wall_s_per_step``, ``data_wait_s``,
    ``steps_per_s_with_data``, ``steps_per_s_without_data``, ``data_wait_share``, ``volumes_per_s``,
    ``median_step_s``, ``median_data_wait_s``, ``flops_per_step``, ``achieved_tflops``,
    ``peak_tflops``, ``chip_share``, ``peak_memory_gib``, each behind ``benchmark/``; seconds, FLOP,
    TFLOP/s, GiB; ``None`` where not measured).
    """

    def __init__(self, skip: int = 5, dirpath: str | None = None, count_flops: bool = True,
                 peak_tflops: float | None = None) -> None:
        self.skip = int(skip)
        self.dirpath = dirpath
        self.count_flops = bool(count_flops)
        self.peak_tflops = peak_tflops
        self.steps: list[float] = []
        self.waits: list[float] = []
        self.summary: dict[str, float | None] = {}
        self.flops_per_step: float | None = None
        self.samples_per_step = 0
        self._events: list[tuple] = []  # CUDA: (start, end) events per step
        self._host: list[tuple[float, float]] = []  # host clock at each step's start and end
        self._window_start: float | None = None
        self._flop_counter: FlopCounterMode | None = None
        self._device = torch.device("cpu")

    @staticmethod
    def _device_of(trainer: pl.Trainer) -> torch.device:
        return trainer.strategy.root_device

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._device = self._device_of(trainer)
        if self._device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self._device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        index = len(self._host)
        if index == self.skip:  # the window opens: the device finishes what was queued before
            if self._device.type == "cuda":
                torch.cuda.synchronize(self._device)
            self._window_start = time.perf_counter()
        if index == 0:
            image = batch["image"] if isinstance(batch, dict) and "image" in batch else None
            self.samples_per_step = int(image.shape[0]) * int(trainer.world_size) if image is not None else 0
            if self.count_flops and not getattr(pl_module.hparams, "compile", False) and index < self.skip:
                self._flop_counter = FlopCounterMode(display=False)
                self._flop_counter.__enter__()
        if self._device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._events.append((start, None))
        self._host.append((time.perf_counter(), float("nan")))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._host:
            return
        if self._device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events[-1] = (self._events[-1][0], end)
        self._host[-1] = (self._host[-1][0], time.perf_counter())
        if self._flop_counter is not None:
            self._flop_counter.__exit__(None, None, None)
            self.flops_per_step = float(self._flop_counter.get_total_flops()) * int(trainer.world_size)
            self._flop_counter = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._flop_counter is not None:  # training stopped inside a step
            self._flop_counter.__exit__(None, None, None)
            self._flop_counter = None
        timed = len(self._host) - self.skip
        if timed <= 0 or self._window_start is None:
            log.warning(f"StepTimer: {len(self._host)} steps, none left after skipping {self.skip}; nothing to report")
            return
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)  # the window closes when the last step has run
            wall = time.perf_counter() - self._window_start
            self.steps = [start.elapsed_time(end) / 1000 for start, end in self._events]
        else:
            wall = self._host[-1][1] - self._window_start
            self.steps = [end - start for start, end in self._host]
        self.waits = [start - previous_end for (_, previous_end), (start, _) in zip(self._host, self._host[1:])]
        steps = self.steps[self.skip :]
        busy = sum(steps)
        with_data, without_data = timed / wall, timed / busy
        flops = self.flops_per_step
        achieved = flops * with_data / 1e12 if flops else None
        peak = self.peak_tflops
        if achieved is not None and peak is None:
            peak = measure_matmul_tflops(self._device, precision_dtype(trainer.precision))
        memory = torch.cuda.max_memory_allocated(self._device) / 2**30 if self._device.type == "cuda" else None
        self.summary = {
            "benchmark/steps_timed": timed,
            "benchmark/step_s": busy / timed,
            "benchmark/wall_s_per_step": wall / timed,
            "benchmark/data_wait_s": (wall - busy) / timed,
            "benchmark/steps_per_s_with_data": with_data,
            "benchmark/steps_per_s_without_data": without_data,
            "benchmark/data_wait_share": max(0.0, 1 - busy / wall),
            "benchmark/volumes_per_s": with_data * self.samples_per_step,
            "benchmark/median_step_s": statistics.median(steps),
            "benchmark/median_data_wait_s": statistics.median(self.waits[self.skip :]) if self.waits[self.skip :] else None,
            "benchmark/flops_per_step": flops,
            "benchmark/achieved_tflops": achieved,
            "benchmark/peak_tflops": peak,
            "benchmark/chip_share": achieved / peak if achieved is not None and peak else None,
            "benchmark/peak_memory_gib": memory,
        }
        s = self.summary
        bound = "the input pipeline (data wait)" if s["benchmark/data_wait_share"] > 0.1 else "the training step (compute)"
        chip = (
            f"; {flops / 1e12:.3g} TFLOP per step, {achieved:.3g} TFLOP/s = {100 * s['benchmark/chip_share']:.1f} % of this "
            f"device's measured {precision_dtype(trainer.precision)} matmul rate ({peak:.3g} TFLOP/s)"
            if achieved is not None and peak else ""
        )
        gpu_memory = f"; peak GPU memory {memory:.2f} GiB" if memory is not None else ""
        log.info(
            f"StepTimer over {timed} steps (totals of the timed window): {with_data:.2f} steps/s with data loading "
            f"({s['benchmark/volumes_per_s']:.1f} volumes/s), {without_data:.2f} without; step {s['benchmark/step_s']:.4f} s, "
            f"data wait {100 * s['benchmark/data_wait_share']:.1f} % of the wall time: bound by {bound} "
            f"(medians: step {s['benchmark/median_step_s']:.4f} s){chip}{gpu_memory}"
        )
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in self.summary.items() if v is not None}, step=trainer.global_step)
        if self.dirpath and trainer.is_global_zero:
            path = Path(self.dirpath) / "step_times.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**self.summary, "steps": self.steps, "waits": self.waits}, indent=1))
