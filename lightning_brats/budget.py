"""Training that knows its budget: progress as a share of steps or wall time, an LR schedule that
follows it, and a run that ends early says so and validates once more.

A preset bounded by ``trainer.max_time`` runs a different number of steps on every CPU. A
schedule planned over ``max_epochs`` would, on a slow CPU, stop in its first third with the
learning rate still high. Here the schedule follows :func:`training_progress`, the larger of
the elapsed share of the steps and of the time budget, so a slower CPU gets a complete, shorter
schedule (nnU-Net's polynomial decay, Isensee et al. 2021, over whatever fits).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)


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
    :class:`~lightning_brats.module.SegmentationModule` sets :attr:`progress` before each step.
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


def _parse_duration(duration: str | timedelta | dict | None) -> str | timedelta | dict | None:
    return None if duration in (None, "", "null") else duration


class TrainingBudget(Timer):
    """Lightning's :class:`~pytorch_lightning.callbacks.Timer` for ``trainer.max_time``, plus:

    - the last step is validated, whatever ends training (the time budget, ``max_steps`` mid-epoch,
      the last epoch when ``check_val_every_n_epoch`` does not divide ``max_epochs``, a signal,
      another callback), so the best checkpoint sees the end of the budget;
    - at the end, a warning when fewer steps ran than were planned, naming both counts and why.

    It takes the Timer's place (Lightning then ignores its own ``max_time``), so its elapsed
    time is saved in checkpoints and survives a resume as the Timer's does.

    Args:
        duration: the wall-clock budget (``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of its
            arguments), normally ``${trainer.max_time}``; ``None`` for no time limit.
        interval: check the budget after every ``"step"`` or ``"epoch"``.
    """

    def __init__(self, duration: str | timedelta | dict | None = None, interval: str = "step", verbose: bool = True) -> None:
        super().__init__(duration=_parse_duration(duration), interval=interval, verbose=verbose)
        self.stop_reason: str | None = None

    def _check_time_remaining(self, trainer: pl.Trainer) -> None:
        was_stopping = trainer.should_stop
        super()._check_time_remaining(trainer)
        if trainer.should_stop and not was_stopping:
            self.stop_reason = f"trainer.max_time={timedelta(seconds=self._duration)} reached"

    def on_train_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        planned = planned_steps(trainer)
        if planned and trainer.global_step >= planned:
            trainer.should_stop = True  # the last planned step (max_steps mid-epoch, or the last epoch's last batch)
        if trainer.should_stop and trainer.fit_loop._can_stop_early and trainer.check_val_every_n_epoch is not None:
            # Lightning validates on a stop only in an epoch that validates anyway
            trainer.check_val_every_n_epoch = 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        planned = planned_steps(trainer)
        if trainer.sanity_checking or trainer.fast_dev_run or not planned or trainer.global_step >= planned:
            return
        reason = self.stop_reason or ("a stop signal" if trainer.received_sigterm else "trainer.should_stop was set")
        share = trainer.global_step / planned
        message = (
            f"Training ended early: {trainer.global_step} of {planned} planned steps ({share:.0%}) ran, in "
            f"{self.time_elapsed('train'):.0f} s ({reason})."
        )
        if self.stop_reason and share < 0.5:
            message += (
                " This machine fits fewer steps into the budget than the preset was planned for; the LR schedule "
                "followed the time budget, but results will be below the recorded ones (see experiments/README.md)."
            )
        log.warning(message)
