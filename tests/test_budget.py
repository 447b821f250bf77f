"""A training budget the schedule knows: LR by progress, a fake clock for trainer.max_time, the final
validation at the stop, the early-end warning and the missing-checkpoint error."""

from __future__ import annotations

import csv
import logging
from types import SimpleNamespace
from typing import ClassVar

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_brats.cli.train import check_checkpoint_written, train
from lightning_brats.training.schedules import PolyLRByProgress
from tests.conftest import compose_config

BASE_LR = 0.002  # conf/model/unet3d.yaml
SECONDS_PER_STEP = 10.0


def test_poly_lr_follows_progress():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    schedule = PolyLRByProgress(optimizer, power=0.9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    for progress in (0.25, 0.5, 0.9, 1.0, 1.5):
        schedule.progress = progress
        schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * max(0.0, 1 - progress) ** 0.9)
    floored = PolyLRByProgress(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01), min_lr_fraction=0.1)
    floored.progress = 1.0
    floored.step()
    assert floored.get_last_lr() == [pytest.approx(0.001)]


class FakeClock(pl.Callback):
    """Advances a fake monotonic clock by ``SECONDS_PER_STEP`` before every training step and records
    the learning rate each step trains with (class attributes: one run at a time)."""

    now: ClassVar[float] = 0.0
    lrs: ClassVar[list[float]] = []
    #: seconds per step: ``(steps, seconds)`` pairs in order, the last one for the rest of the run
    pace: ClassVar[list[tuple[int, float]]] = [(0, SECONDS_PER_STEP)]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = len(FakeClock.lrs)
        FakeClock.now += next(seconds for until, seconds in FakeClock.pace if until == 0 or step < until)
        FakeClock.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _tiny(phantom_root, tmp_path, extra):
    return compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.max_val_cases=1", "data.patch_size=[32,32,32]",
         "data.batch_size=2", "data.samples_per_epoch=8", "model.net.base_filters=8", "model.net.depth=3",
         "inference.overlap=0.25", "logger=csv", "validate_best=false", "trainer.precision=32",
         "+callbacks.clock._target_=tests.test_budget.FakeClock", *extra],
        tmp_path, tmp_path / "cache",
    )


@pytest.mark.slow
def test_time_budget_drives_the_schedule_and_ends_with_a_validation(phantom_root, tmp_path, monkeypatch, caplog):
    """100 s of fake time at 10 s per step: the LR decays over 10 steps although 200 are planned, the
    stopping step (mid-epoch, in no validation epoch) is validated and checkpointed, and the log says
    how many steps ran."""
    import pytorch_lightning.callbacks.timer as timer_module

    FakeClock.now, FakeClock.lrs = 0.0, []
    monkeypatch.setattr(timer_module, "time", SimpleNamespace(monotonic=lambda: FakeClock.now))
    # 4 steps per epoch, 50 epochs planned = 200 steps; validation only every 100 epochs
    cfg = _tiny(phantom_root, tmp_path, ["trainer.max_epochs=50", "trainer.check_val_every_n_epoch=100",
                                         "trainer.max_time=00:00:01:40"])
    with caplog.at_level(logging.WARNING, logger="lightning_brats.training.callbacks.budget"):
        metrics = train(cfg)
    # step k (1-based) trains with the LR set after step k-1, when progress was (k-1) x 10 s / 100 s
    expected = [BASE_LR * (1 - (k - 1) * SECONDS_PER_STEP / 100) ** 0.9 for k in range(1, 11)]
    assert FakeClock.lrs == pytest.approx(expected)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 10 and last["epoch"] == 2
    (best,) = (tmp_path / "checkpoints").glob("epoch_*.ckpt")
    assert torch.load(best, map_location="cpu", weights_only=True)["global_step"] == 10
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        validated = [row for row in csv.DictReader(handle) if row.get("val/dice_mean")]
    assert [int(row["step"]) for row in validated] == [9]  # Lightning logs the stopping step's index
    assert "val/dice_mean" in metrics
    assert "Training ended early: 10 of 200 planned steps (5%) ran, in 100 s (trainer.max_time=0:01:40 reached)" in caplog.text


@pytest.mark.slow
def test_without_a_time_budget_the_schedule_spans_the_planned_steps(phantom_root, tmp_path, caplog):
    FakeClock.now, FakeClock.lrs = 0.0, []
    cfg = _tiny(phantom_root, tmp_path, ["trainer.max_epochs=50", "trainer.max_steps=6", "trainer.check_val_every_n_epoch=1"])
    with caplog.at_level(logging.WARNING, logger="lightning_brats.training.callbacks.budget"):
        train(cfg)
    assert FakeClock.lrs == pytest.approx([BASE_LR * (1 - k / 6) ** 0.9 for k in range(6)])
    assert "ended early" not in caplog.text


@pytest.mark.slow
def test_the_last_planned_step_is_validated(phantom_root, tmp_path):
    """max_steps ends training mid-epoch 1, in an epoch that would not validate (every 3 epochs):
    the last step is validated anyway, and the best checkpoint can be that step."""
    FakeClock.now, FakeClock.lrs = 0.0, []
    cfg = _tiny(phantom_root, tmp_path, ["trainer.max_epochs=50", "trainer.max_steps=6", "trainer.check_val_every_n_epoch=3"])
    train(cfg)
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        validated = [int(row["step"]) for row in csv.DictReader(handle) if row.get("val/dice_mean")]
    assert validated == [5]  # the 6th step (Lightning logs its 0-based index)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6


def test_a_run_without_any_checkpoint_is_an_error(tmp_path):
    trainer = pl.Trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")], logger=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match=r"training stopped after 0 steps without writing any checkpoint \(dirpath .*ckpt\)"):
        check_checkpoint_written(trainer)


def _fill_run(phantom_root, tmp_path, monkeypatch, caplog, pace, extra=()):
    """A run of 2 planned epochs of 4 steps (8 steps) with 120 s of fake budget, at ``pace``."""
    import pytorch_lightning.callbacks.timer as timer_module

    FakeClock.now, FakeClock.lrs, FakeClock.pace = 0.0, [], pace
    monkeypatch.setattr(timer_module, "time", SimpleNamespace(monotonic=lambda: FakeClock.now))
    cfg = _tiny(phantom_root, tmp_path, ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1000", "trainer.max_time=00:00:02:00",
                                         "callbacks.training_budget.warmup_steps=5", "callbacks.training_budget.replan_every=10",
                                         "callbacks.training_budget.margin=10", *extra])
    try:
        with caplog.at_level(logging.INFO, logger="lightning_brats.training.callbacks.budget"):
            train(cfg)
    finally:
        FakeClock.pace = [(0, SECONDS_PER_STEP)]
    return torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_a_fast_machine_fills_its_time_budget_with_a_complete_schedule(phantom_root, tmp_path, monkeypatch, caplog):
    """1 s per step, 120 s budget, 8 steps configured (done at 8 s): after 5 steps the plan is the steps
    that fit, 5 + (120 - 5 - 10 s margin) = 110, and the run ends there, 10 s before the budget, with
    the LR decayed to its end and the last step validated."""
    steps = _fill_run(phantom_root, tmp_path, monkeypatch, caplog, [(0, 1.0)])
    assert steps == 110 and FakeClock.now == pytest.approx(110.0)
    assert "planning 110 steps (was 8)" in caplog.text and "ended early" not in caplog.text
    assert FakeClock.lrs[-1] < 0.02 * BASE_LR  # step 110 trains at the schedule's end
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle) if r.get("val/dice_mean")] == [109]


@pytest.mark.slow
def test_a_machine_that_slows_down_is_replanned_and_still_ends_inside_the_budget(phantom_root, tmp_path, monkeypatch, caplog):
    """1 s per step, then 4 s from step 30 on: the plan shrinks as the measured pace does, and the run
    ends inside the budget by its plan (not stopped by the clock), the schedule complete."""
    steps = _fill_run(phantom_root, tmp_path, monkeypatch, caplog, [(30, 1.0), (0, 4.0)])
    plans = [int(line.split("planning ")[1].split()[0]) for line in caplog.text.splitlines() if "planning " in line]
    assert plans[0] == 110 and plans[-1] < plans[0] and steps == plans[-1]
    assert 120 - 10 - 4 * 10 <= FakeClock.now <= 120 and "ended early" not in caplog.text
    assert FakeClock.lrs[-1] < 0.1 * BASE_LR


@pytest.mark.slow
def test_trainer_max_steps_stays_a_limit_when_filling(phantom_root, tmp_path, monkeypatch, caplog):
    assert _fill_run(phantom_root, tmp_path, monkeypatch, caplog, [(0, 1.0)], ["trainer.max_steps=12"]) == 12


@pytest.mark.slow
def test_a_machine_too_slow_for_the_configured_steps_says_how_many_fit(phantom_root, tmp_path, monkeypatch, caplog):
    """16 s per step, 8 steps configured, 120 s budget: after the 5 warm-up steps (80 s) only 1 more fits
    before the 10 s margin; the plan stays at 8, the log says about 6 fit and that the clock stops the run."""
    _fill_run(phantom_root, tmp_path, monkeypatch, caplog, [(0, 16.0)])
    assert "about 6 of the 8 planned steps fit into trainer.max_time=0:02:00" in caplog.text
    assert "planning " not in caplog.text and FakeClock.now <= 120 + 16
