"""Training step time against data-wait time: is the accelerator or the input pipeline the bottleneck?"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class StepTimer(pl.Callback):
    """Time every training step and the wait for its batch, as nnU-Net's benchmark trainers do.

    nnU-Net compares a run with data loading (``nnUNetTrainerBenchmark_5epochs``) against one that
    trains on a fixed batch (``..._noDataLoading``). Here one run measures both: the *step* is from
    ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, optimiser: the time
    without data loading), the *data wait* from the previous step's end to this step's start
    (fetching the batch from the loader, the transfer to the device and the device augmentation
    of ``data.augment.device=batch``: what loading adds when the workers do not keep up). On a
    GPU both ends are synchronised so the times are the device's.

    Args:
        skip: the first steps left out (warm-up: worker start, allocator, cuDNN autotuning).
        dirpath: where ``step_times.json`` is written at the end of fit (``None``: not written).

    At the end of fit the summary (median step and data wait in seconds, steps per second with and
    without data loading, the share of time waiting) is logged, sent to the loggers as
    ``benchmark/*`` and kept in :attr:`summary`.
    """

    def __init__(self, skip: int = 5, dirpath: str | None = None) -> None:
        self.skip = int(skip)
        self.dirpath = dirpath
        self.steps: list[float] = []
        self.waits: list[float] = []
        self.summary: dict[str, float] = {}
        self._last_end: float | None = None
        self._start = 0.0

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_end = self._now(pl_module)  # the first batch's wait includes starting the workers

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._start = self._now(pl_module)
        if self._last_end is not None:
            self.waits.append(self._start - self._last_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._last_end = self._now(pl_module)
        self.steps.append(self._last_end - self._start)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps, waits = self.steps[self.skip :], self.waits[self.skip :]
        if not steps or not waits:
            log.warning(f"StepTimer: {len(self.steps)} steps, none left after skipping {self.skip}; nothing to report")
            return
        step, wait = statistics.median(steps), statistics.median(waits)
        self.summary = {
            "benchmark/steps_timed": len(steps),
            "benchmark/step_s": step,
            "benchmark/data_wait_s": wait,
            "benchmark/steps_per_s_without_data": 1 / step,
            "benchmark/steps_per_s_with_data": 1 / (step + wait),
            "benchmark/data_wait_share": sum(waits) / (sum(waits) + sum(steps)),
        }
        bound = "the input pipeline (data wait)" if wait > 0.1 * step else "the training step (compute)"
        log.info(
            f"StepTimer over {len(steps)} steps: step {step:.3f} s, data wait {wait:.3f} s (medians); "
            f"{1 / (step + wait):.2f} steps/s with data loading, {1 / step:.2f} without; "
            f"{100 * self.summary['benchmark/data_wait_share']:.0f} % of the time waiting: bound by {bound}"
        )
        for logger in trainer.loggers:
            logger.log_metrics(self.summary, step=trainer.global_step)
        if self.dirpath and trainer.is_global_zero:
            path = Path(self.dirpath) / "step_times.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**self.summary, "steps": self.steps, "waits": self.waits}, indent=1))
