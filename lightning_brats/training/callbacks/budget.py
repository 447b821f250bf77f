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

    With ``fill`` and a time budget, the run uses the budget it is given: after ``warmup_steps`` steps
    the steps are planned from the measured time per step (validation included, as it happens), and
    re-planned every ``replan_every`` steps from the time per step since the last plan (a machine that
    slows down gets fewer steps), so training ends within ``margin`` of the budget's end rather than
    at a step count a slower machine was sized for. A plan only ever extends the configured steps
    (``max_epochs`` x batches) or shortens an earlier extension, never past ``trainer.max_steps`` (a
    limit); where the configured steps do not fit, the time budget stops the run as before. The LR schedule follows the plan
    (:func:`~lightning_brats.training.schedules.training_progress`), and the last planned step is validated.

    Args:
        duration: the wall-clock budget (``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of its
            arguments), normally ``${trainer.max_time}``; ``None`` for no time limit.
        interval: check the budget after every ``"step"`` or ``"epoch"``.
        fill: plan the steps from the measured step time so that the run fills its time budget.
        warmup_steps: steps timed before the first plan (the first ones are slower: workers, caches, autotuning).
        replan_every: steps between two plans.
        margin: seconds left at the end for the last validation and checkpoint, at least; the longest
            validation seen so far is added.
    """

    def __init__(self, duration: str | timedelta | dict | None = None, interval: str = "step", verbose: bool = True,
                 fill: bool = False, warmup_steps: int = 20, replan_every: int = 100, margin: float = 30.0) -> None:
        super().__init__(duration=_parse_duration(duration), interval=interval, verbose=verbose)
        self.stop_reason: str | None = None
        self.fill, self.warmup_steps, self.replan_every, self.margin = bool(fill), int(warmup_steps), int(replan_every), float(margin)
        self.configured_steps: int | None = None
        self.step_cap: int | None = None
        self._mark: tuple[float, int] = (0.0, 0)  # (elapsed s, global step) the current rate is measured from
        self._next_plan: int | None = None
        self._validation_started: float | None = None
        self._short_logged: int | None = None  # the step estimate last logged where the planned steps do not fit
        self.longest_validation = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.configured_steps = planned_steps(trainer)
        self.step_cap = trainer.max_steps if trainer.max_steps not in (None, -1) else None
        self._mark, self._next_plan = (self.time_elapsed("train"), trainer.global_step), trainer.global_step + self.warmup_steps

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._validation_started = self.time_elapsed("train")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._validation_started is not None:
            self.longest_validation = max(self.longest_validation, self.time_elapsed("train") - self._validation_started)
            self._validation_started = None

    def _plan(self, trainer: pl.Trainer) -> None:
        """Plan the steps that fit into what is left of the budget, at the time per step measured since
        the last plan (since the start of training for the first, warm-up included: a cautious start)."""
        elapsed, step = self.time_elapsed("train"), trainer.global_step
        since, done = elapsed - self._mark[0], step - self._mark[1]
        self._mark, self._next_plan = (elapsed, step), step + self.replan_every
        if done <= 0 or since <= 0:
            return
        per_step = since / done
        left = self._duration - elapsed - self.margin - self.longest_validation
        fits = step + max(1, int(left // per_step))
        wanted = max(fits, self.configured_steps or 0)  # where the configured steps do not fit, the clock stops the run
        if self.step_cap is not None:
            wanted = min(wanted, self.step_cap)  # trainer.max_steps stays a limit
        current = planned_steps(trainer)
        if fits < wanted and (self._short_logged is None or abs(fits - self._short_logged) > 0.02 * self._short_logged):
            self._short_logged = fits
            log.info(
                f"Budget: {per_step:.3g} s per step (validation included) over steps {step - done}-{step}; about {fits} of "
                f"the {wanted} planned steps fit into trainer.max_time={timedelta(seconds=self._duration)}: the clock "
                "stops the run and the LR schedule follows the time"
            )
        if current is not None and abs(wanted - current) <= 0.02 * current:
            return
        trainer.fit_loop.max_epochs = -1  # steps, not epochs, bound the run now
        trainer.fit_loop.epoch_loop.max_steps = wanted
        log.info(
            f"Budget: {per_step:.3g} s per step (validation included) over steps {step - done}-{step}; planning {wanted} "
            f"steps (was {current}) to end within {self.margin + self.longest_validation:.0f} s of trainer.max_time="
            f"{timedelta(seconds=self._duration)}"
        )

    def _check_time_remaining(self, trainer: pl.Trainer) -> None:
        was_stopping = trainer.should_stop
        super()._check_time_remaining(trainer)
        if trainer.should_stop and not was_stopping:
            self.stop_reason = f"trainer.max_time={timedelta(seconds=self._duration)} reached"

    def on_train_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        if self.fill and self._duration and self._next_plan is not None and trainer.global_step >= self._next_plan:
            self._plan(trainer)
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
