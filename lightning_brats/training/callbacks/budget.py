"""The callback of a run bounded by its budget: a run that ends early says so and validates once more.

Enters: ``trainer.max_time`` (``duration``) and the planned steps. Leaves: a stopped trainer whose
last step was validated, and a warning naming the steps that ran. The schedule that follows the
same budget is :mod:`lightning_brats.training.schedules`.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer

from lightning_brats.training.schedules import planned_steps

log = logging.getLogger(__name__)


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
