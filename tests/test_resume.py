"""Exact resume: ``ckpt_path=<file>`` / ``ckpt_path=last`` continue a run (weights, optimiser, LR
schedule, epoch, global step, sampler epoch, W&B run id) as if it had not stopped; a SLURM requeue
checkpoint is picked up by Lightning in the same run folder."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from lightning_brats.cli.train import resolve_ckpt_path, train
from lightning_brats.training.module import CONFIG_KEY, WANDB_ID_KEY
from tests.conftest import compose_config

# 1 step of 2 samples per epoch, validation of one case after the third epoch only; the LR
# schedule follows the planned steps (trainer.max_epochs), so the run stopped after 2 of 3 epochs
# plans 3 too (StopAfterEpochs)
TINY = ["data=sample", "data.num_folds=4", "data.max_val_cases=1", "data.patch_size=[32,32,32]", "data.batch_size=2",
        "data.samples_per_epoch=2", "model.net.base_filters=8", "inference.overlap=0.25",
        "trainer.check_val_every_n_epoch=3", "validate_best=false"]


class StopAfterEpochs(pl.Callback):
    """Stops training at the end of epoch ``epochs - 1``, as an interrupted run would have ended."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epochs - 1:
            trainer.should_stop = True


class KeyRecorder(pl.Callback):
    """Appends the ``(epoch, index)`` keys of every training batch to ``path`` (one JSON list per line)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(batch["key"].tolist()) + "\n")


class PreemptOnce(pl.Callback):
    """Sends the SLURM pre-emption signal (SIGUSR1) after the first step of epoch ``epoch``, then dies
    as a job killed by SLURM would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGUSR1)  # Lightning saves hpc_ckpt_1.ckpt and calls scontrol requeue
            raise RuntimeError("pre-empted")


def _keys(path: Path) -> list[list[int]]:
    return [key for line in path.read_text().splitlines() for key in json.loads(line)]


def _run(phantom_root: Path, out: Path, extra: list[str], log_dir: Path | None = None) -> dict[str, float]:
    cfg = compose_config(
        [*TINY, f"data.root={phantom_root}", "+callbacks.keys._target_=tests.test_resume.KeyRecorder",
         f"+callbacks.keys.path={out / 'keys.jsonl'}", *extra],
        out, out.parent / "cache",
    )
    if log_dir is not None:
        with open_dict(cfg):
            cfg.paths.log_dir = str(log_dir)
    return train(cfg)


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.mark.slow
def test_two_epochs_then_resume_equals_three_straight(phantom_root, tmp_path):
    straight = _run(phantom_root, tmp_path / "straight", ["trainer.max_epochs=3", "logger=csv"])
    # the first run of a task: logs/train/runs/<run>; stopped after 2 of its 3 planned epochs
    first_dir = tmp_path / "logs" / "train" / "runs" / "first"
    _run(phantom_root, first_dir, ["trainer.max_epochs=3", "logger=wandb", "+callbacks.stop._target_=tests.test_resume.StopAfterEpochs",
                                   "+callbacks.stop.epochs=2"])
    first = _load(first_dir / "checkpoints" / "last.ckpt")
    assert first["epoch"] == 1 and first["global_step"] == 2
    assert first["SegmentationDataModule"] == {"train_sampler": {"epoch": 2}}  # Lightning saved the datamodule's state
    run_id = first[WANDB_ID_KEY]
    # ckpt_path=last: the newest last.ckpt of this task's runs, i.e. the first run's
    resumed = _run(phantom_root, tmp_path / "resumed", ["trainer.max_epochs=3", "logger=wandb", "ckpt_path=last"],
                   log_dir=tmp_path / "logs")

    a, b = _load(tmp_path / "straight" / "checkpoints" / "last.ckpt"), _load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 3
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, atol=1e-6, rtol=1e-5, msg=name)
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(state_b["exp_avg_sq"], state_a["exp_avg_sq"], atol=1e-8, rtol=1e-5)
    assert a["lr_schedulers"] == b["lr_schedulers"]  # the LR schedule continued, not restarted
    # curves.png's history travels in the checkpoint: the resumed run has all three epochs
    curves = next(v for k, v in b["callbacks"].items() if k.startswith("TrainingCurves"))
    assert [epoch for epoch, _ in curves["history"]["train/loss_epoch"]] == [0, 1, 2]
    for key in ("val/dice_wt", "val/dice_tc", "val/dice_et", "val/dice_mean", "val/loss"):
        assert resumed[key] == pytest.approx(straight[key], abs=1e-6)
    # the sampler went on with epoch 2's samples, the ones the straight run drew in its third epoch
    straight_keys = _keys(tmp_path / "straight" / "keys.jsonl")
    assert _keys(first_dir / "keys.jsonl") == straight_keys[:4]
    assert _keys(tmp_path / "resumed" / "keys.jsonl") == straight_keys[4:] == [[2, 0], [2, 1]]
    # the resumed run continues the first run's W&B run
    assert b[WANDB_ID_KEY] == run_id
    assert list((tmp_path / "resumed").glob(f"wandb/offline-run-*-{run_id}"))


def test_ckpt_path_last_takes_the_newest_run_and_names_where_it_looked(tmp_path):
    cfg = compose_config(["ckpt_path=last"], tmp_path / "run")
    with open_dict(cfg):
        cfg.paths.log_dir = str(tmp_path / "logs")
    pattern = str(tmp_path / "logs" / "train" / "runs" / "*" / "checkpoints" / "last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no checkpoint matches " + pattern.replace("*", r"\*")):
        resolve_ckpt_path(cfg)
    for i, name in enumerate(["2024-01-02_00-00-00", "2024-01-01_00-00-00"]):  # mtime, not the name, decides
        path = tmp_path / "logs" / "train" / "runs" / name / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({"state_dict": {}, CONFIG_KEY: {"data": {}}}, path)  # the smallest checkpoint resolve accepts
        os.utime(path, (time.time() + 10 * i, time.time() + 10 * i))
    assert resolve_ckpt_path(cfg) == str(path.resolve())
    with open_dict(cfg):
        cfg.ckpt_path = str(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match=r"missing.ckpt: no such checkpoint file"):
        resolve_ckpt_path(cfg)
    with open_dict(cfg):
        cfg.ckpt_path = None
    assert resolve_ckpt_path(cfg) is None


@pytest.mark.slow
def test_slurm_requeue_resumes_from_lightnings_checkpoint(phantom_root, tmp_path, monkeypatch):
    """SIGUSR1 under SLURM: Lightning saves hpc_ckpt_1.ckpt in the run folder and requeues; the
    requeued job (same command, same run folder, no ckpt_path) resumes from it, W&B run included."""
    for name, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "train",
                        "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "node1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                        "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    run = tmp_path / "slurm_4242"  # hydra.run.dir=logs/train/runs/slurm_$SLURM_JOB_ID
    extra = ["trainer=cpu", "trainer.max_epochs=2", "data.samples_per_epoch=4", "logger=wandb"]  # 2 steps per epoch
    with pytest.raises(RuntimeError, match="pre-empted"):
        _run(phantom_root, run, [*extra, "+callbacks.preempt._target_=tests.test_resume.PreemptOnce", "+callbacks.preempt.epoch=1"])
    hpc = _load(run / "hpc_ckpt_1.ckpt")
    assert hpc["global_step"] == 3 and WANDB_ID_KEY in hpc
    time.sleep(1.1)  # W&B names an offline run's folder by the second it starts: two runs, two folders
    _run(phantom_root, run, extra)  # the requeued job: the same command in the same run folder
    last = _load(run / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 1 and last["global_step"] == 4  # the one step left, not a new start
    assert len(list(run.glob(f"wandb/offline-run-*-{hpc[WANDB_ID_KEY]}"))) == 2  # one W&B run, resumed


SLURM_ENV = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "train",
             "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "node1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def _no_slurm(monkeypatch) -> None:
    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)


def _tiny_checkpoint(path: Path, run_id: str | None) -> Path:
    """The smallest checkpoint the loader accepts, with the W&B run id ``run_id`` (or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, CONFIG_KEY: {"data": {}}, **({WANDB_ID_KEY: run_id} if run_id else {})}, path)
    return path


def test_a_resumed_run_continues_the_checkpoints_wandb_run(tmp_path, monkeypatch, caplog):
    """continue_wandb_run sets the W&B logger's id and resume=allow from the checkpoint; a logger with an id of
    its own, a checkpoint without an id, no checkpoint and no W&B logger leave the config as it was."""
    from lightning_brats.training.resume import continue_wandb_run, read_wandb_run_id

    _no_slurm(monkeypatch)
    with_id, without_id = _tiny_checkpoint(tmp_path / "a.ckpt", "run42"), _tiny_checkpoint(tmp_path / "b.ckpt", None)
    assert read_wandb_run_id(str(with_id)) == "run42" and read_wandb_run_id(str(without_id)) is None
    cfg = compose_config(["logger=wandb", "+logger.mine._target_=pytorch_lightning.loggers.WandbLogger", "+logger.mine.id=keep"],
                         tmp_path / "run")
    assert continue_wandb_run(cfg, str(with_id)) == "run42"
    assert (cfg.logger.wandb.id, cfg.logger.wandb.resume) == ("run42", "allow")
    assert (cfg.logger.mine.id, cfg.logger.mine.get("resume")) == ("keep", None)  # its own id wins
    for ckpt in (str(without_id), None):
        cfg = compose_config(["logger=wandb"], tmp_path / "run")
        with caplog.at_level("WARNING"):
            assert continue_wandb_run(cfg, ckpt) is None
        assert "id" not in cfg.logger.wandb and "resume" not in cfg.logger.wandb
    assert f"{without_id} holds no W&B run id" in caplog.text  # says the resumed run starts a new W&B run
    cfg = compose_config(["logger=csv"], tmp_path / "run")
    assert continue_wandb_run(cfg, str(with_id)) is None and "wandb" not in cfg.logger


def test_a_slurm_requeue_continues_the_wandb_run_of_the_newest_lightning_checkpoint(tmp_path, monkeypatch):
    """Without ckpt_path, under SLURM, the W&B run is the one of the highest-numbered hpc_ckpt_<n>.ckpt in the run
    folder (10 after 9: by number, not by name); outside SLURM nothing is resumed."""
    from lightning_brats.training.resume import continue_wandb_run

    _no_slurm(monkeypatch)
    run = tmp_path / "run"
    for n in (2, 9, 10):
        _tiny_checkpoint(run / f"hpc_ckpt_{n}.ckpt", f"id{n}")
    cfg = compose_config(["logger=wandb"], run)
    assert continue_wandb_run(cfg, None) is None  # not under SLURM: Lightning does not resume either
    for name, value in SLURM_ENV.items():
        monkeypatch.setenv(name, value)
    assert continue_wandb_run(cfg, None) == "id10" and cfg.logger.wandb.id == "id10"
    cfg = compose_config(["logger=wandb"], tmp_path / "empty")
    assert continue_wandb_run(cfg, None) is None  # a first SLURM job: no requeue checkpoint yet
