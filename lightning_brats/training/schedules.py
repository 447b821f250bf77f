"""Training that knows its budget: progress as a share of steps or wall time, and an LR schedule that
follows it (the callback that ends a run on its budget is
:class:`~lightning_brats.training.callbacks.budget.TrainingBudget`).

A preset bounded by ``trainer.max_time`` runs a different number of steps on every CPU. A
schedule planned over ``max_epochs`` would, on a slow CPU, stop in its first third with the
learning rate still high. Here the schedule follows :func:`training_progress`, the larger of
the elapsed share of the steps and of the time budget, so a slower CPU gets a complete, shorter
schedule (nnU-Net's polynomial decay, Isensee et al. 2021, over whatever fits).
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def find_timer(trainer: pl.Trainer) -> Timer | None:
    """The trainer's :class:`~pytorch_lightning.callbacks.Timer` (``trainer.max_time`` or
    :class:`TrainingBudget`), or ``None``."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)


def planned_steps(trainer: pl.Trainer) -> int | None:
    """Optimiser steps the run is planned for (``max_steps``, or ``max_epochs`` x batches per
    epoch), ``None`` when unbounded."""
    total = trainer.estimated_stepping_batches  # inf for an unbounded run
    return int(total) if total != float("inf") else None


def training_progress(trainer: pl.Trainer, steps_done: int | None = None) -> float:
    """How far training is through its budget, in ``[0, 1]``.

    The larger of ``steps done / planned steps`` and ``elapsed training time / max_time``
    (from the trainer's Timer, whose elapsed time survives a resume). Without either bound: 0.

    Args:
        trainer: the running trainer.
        steps_done: optimiser steps done; default ``trainer.global_step`` (which Lightning counts
            only after ``optimizer_step`` returns).
    """
    shares = []
    steps = planned_steps(trainer)
    if steps:
        shares.append((trainer.global_step if steps_done is None else steps_done) / steps)
    timer = find_timer(trainer)
    duration = getattr(timer, "_duration", None)
    if timer is not None and duration:
        shares.append(timer.time_elapsed("train") / duration)
    return min(1.0, max(shares, default=0.0))


class PolyLRByProgress(LRScheduler):
    """Polynomial learning-rate decay over the training budget: ``lr = base_lr * (1 - progress) ** power``.

    nnU-Net's schedule (Isensee et al. 2021, power 0.9) over :func:`training_progress` instead of a
    fixed epoch count. Stepped every optimiser step (``interval = "step"``);
    :class:`~lightning_brats.training.module.SegmentationModule` sets :attr:`progress` before each step.
    On resume the progress is recomputed from the restored step and Timer, so the LR continues.

    Args:
        optimizer: the optimiser whose groups' ``lr`` is scheduled.
        power: the polynomial's exponent (0.9 in nnU-Net).
        min_lr_fraction: the LR never falls below this fraction of the base LR.
    """

    #: Lightning's scheduler interval for this schedule.
    interval = "step"

    def __init__(self, optimizer: Optimizer, power: float = 0.9, min_lr_fraction: float = 0.0) -> None:
        self.power = float(power)
        self.min_lr_fraction = float(min_lr_fraction)
        self.progress = 0.0
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        factor = max(self.min_lr_fraction, (1.0 - min(max(self.progress, 0.0), 1.0)) ** self.power)
        return [base * factor for base in self.base_lrs]
