"""Multi-process training (Lightning DDP, 2 CPU processes over gloo): the trainer configs, the
global batch size, disjoint samples per rank, validation shared out without repeats (Dice equal
to one process's), rank-0-only preparation and outputs, and the CLI's single run folder."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from lightning_brats.cli.train import train
from lightning_brats.data.datamodule import SegmentationDataModule
from lightning_brats.data.preprocess import PreprocessedCache
from tests.conftest import REPO, compose_config

SLURM_VARS = ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_JOB_NAME", "SLURM_JOB_ID",
              "SLURM_NODELIST", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID")
# fp32 everywhere: these tests compare DDP with one process to 1e-6, which bf16 autocast (what
# trainer.precision=auto picks on a CPU with AVX512-BF16) does not reproduce across process counts
TINY = ["data=sample", "data.num_folds=2", "data.max_val_cases=3", "data.patch_size=[32,32,32]", "data.batch_size=4",
        "data.samples_per_epoch=8", "model.net.base_filters=8", "inference.overlap=0.25", "trainer.precision=32"]


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _append(path: Path, line: str) -> None:
    with open(path, "a") as handle:
        handle.write(line + "\n")


class RecordingCache(PreprocessedCache):
    """The preprocessing cache, noting in ``<record_dir>/cache_writes.txt`` which rank writes each case."""

    record_dir: str

    def _write(self, files) -> None:
        _append(Path(self.record_dir) / "cache_writes.txt", f"{_rank()} {files.case_id}")
        super()._write(files)


class RecordingDataModule(SegmentationDataModule):
    """:class:`SegmentationDataModule` whose cache notes its writers (a class, so that it pickles for ``ddp_spawn``)."""

    def __init__(self, record_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cache.__class__ = RecordingCache
        self.cache.record_dir = record_dir


class RankRecorder(pl.Callback):
    """Writes ``<record_dir>/rank<r>.json``: the (epoch, index) keys of every training batch, the
    validation cases each rank saw, and the world size."""

    def __init__(self, record_dir: str) -> None:
        self.record_dir = record_dir
        self.batches: list[list[list[int]]] = []
        self.val_cases: list[list[str]] = []

    def setup(self, trainer, pl_module, stage) -> None:
        # a buffer, as batch norm has: DDP broadcasts buffers in the wrapped model's forward (the
        # first validation step included), which the uneven validation shares must not hang
        pl_module.register_buffer("ddp_test_buffer", torch.zeros(1), persistent=False)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch["key"].tolist())

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.val_cases.append([])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_cases[-1].extend(batch["case_id"])

    def on_fit_end(self, trainer, pl_module) -> None:
        record = {"world_size": trainer.world_size, "batches": self.batches, "val_cases": self.val_cases}
        (Path(self.record_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.fixture
def no_slurm(monkeypatch):
    for name in SLURM_VARS:
        monkeypatch.delenv(name, raising=False)


def test_ddp_config_is_lightning_ddp_with_slurm_requeue(tmp_path, monkeypatch, no_slurm):
    from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
    from pytorch_lightning.strategies import DDPStrategy

    cfg = compose_config(["trainer=ddp"], tmp_path)
    assert cfg.trainer.devices == "auto" and cfg.trainer.num_nodes == 1 and cfg.trainer.sync_batchnorm is True
    cpu = compose_config(["trainer=ddp_cpu"], tmp_path)
    assert cpu.trainer.devices == 2 and cpu.trainer.sync_batchnorm is False  # torch's SyncBatchNorm is GPU-only
    trainer = hydra.utils.instantiate(cpu.trainer, logger=False, precision=32)  # train.py resolves precision=auto
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2
    assert isinstance(trainer.strategy.cluster_environment, LightningEnvironment)

    # inside a SLURM job (srun sets these): devices/num_nodes follow the allocation and Lightning
    # picks SLURMEnvironment with auto-requeue on SIGUSR1 by itself
    for name, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_JOB_NAME": "train",
                        "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "node1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                        "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    cfg = compose_config(["trainer=ddp"], tmp_path)
    assert cfg.trainer.devices == 1 and cfg.trainer.num_nodes == 1
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, precision=32)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert environment.requeue_signal == signal.SIGUSR1
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy._layer_sync is not None  # SyncBatchNorm


def test_global_batch_size_must_divide_among_processes(phantom_root, tmp_path):
    cfg = compose_config([*TINY, f"data.root={phantom_root}", "data.batch_size=6"], tmp_path, tmp_path / "cache")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.trainer = SimpleNamespace(world_size=4, global_rank=0)
    with pytest.raises(ValueError, match=r"data.batch_size=6 is the global batch size and must be divisible by the 4"):
        datamodule.setup("fit")
    cfg = compose_config([*TINY, f"data.root={phantom_root}", "data.samples_per_epoch=2"], tmp_path, tmp_path / "cache")
    with pytest.raises(InstantiationException, match=r"data.samples_per_epoch=2 is smaller than data.batch_size=4"):
        hydra.utils.instantiate(cfg.data)


def test_ddp_relaunch_is_refused_in_a_multirun(phantom_root, tmp_path):
    """``-m`` with trainer=ddp: the re-run command line would be the whole sweep; a clear error instead."""
    cfg = compose_config([*TINY, f"data.root={phantom_root}", "trainer=ddp_cpu", "logger=csv", "hydra.mode=MULTIRUN"],
                         tmp_path, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"trainer.devices=2 in a Hydra multirun \(-m\): .*submitit_slurm"):
        train(cfg)
    assert not (tmp_path / "cache").exists()  # refused before preparing anything


def _per_case_validation(cfg, ckpt: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``ckpt`` in this one process, case by case as ``validation_step`` does: Dice
    ``(cases, regions)`` and loss ``(cases,)`` over all validation cases of the fold."""
    from lightning_brats.evaluation.metrics import region_dice
    from lightning_brats.inference.sliding_window import predict_logits

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("record_dir")
    datamodule = hydra.utils.instantiate({**data, "_target_": "lightning_brats.data.datamodule.SegmentationDataModule"})
    datamodule.setup("validate")
    model = hydra.utils.instantiate(cfg.model)
    model.load_state_dict(torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"])
    model.eval()
    dice, loss = [], []
    with torch.no_grad():
        for item in datamodule.val_set:
            image, target = item["image"][None], item["target"][None]
            logits = predict_logits(model.net, image, model.patch_size, model.inference.overlap, model.inference.sw_batch_size)
            dice.append(region_dice(torch.sigmoid(logits) > model.inference.threshold, target.bool())[0])
            loss.append(model.loss(logits, target))
    assert len(dice) == 3
    return torch.stack(dice), torch.stack(loss)


@pytest.mark.slow
def test_ddp_spawn_shards_training_and_validation(phantom_root, tmp_path):
    """2 processes: disjoint samples making up the global batches, validation shared out with no
    repeated case (Dice equal to one process's to 1e-6), rank 0 alone preparing and writing outputs.
    (``ddp_spawn``: Lightning's default launcher would re-run pytest; the CLI test below uses it.)"""
    records = tmp_path / "records"
    records.mkdir()
    cfg = compose_config(
        [*TINY, f"data.root={phantom_root}", "trainer=ddp_cpu", "+trainer.strategy.start_method=spawn",
         "trainer.max_epochs=2", "logger=csv", "+trainer.enable_progress_bar=false", "~callbacks.progress_bar", "~callbacks.model_summary",
         "data._target_=tests.test_ddp.RecordingDataModule", f"+data.record_dir={records}",
         "+callbacks.recorder._target_=tests.test_ddp.RankRecorder", f"+callbacks.recorder.record_dir={records}",
         # a hang (a collective that the rank with fewer validation cases never joins) fails after 2 minutes
         "+trainer.strategy.timeout._target_=datetime.timedelta", "+trainer.strategy.timeout.seconds=120",
         "validate_best=false"],
        tmp_path, tmp_path / "cache",
    )
    train(cfg)  # 2 processes

    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # training: 2 epochs x 2 steps, 2 samples per process per step (global batch 4)
    for r in ranks:
        assert len(r["batches"]) == 4 and all(len(batch) == 2 for batch in r["batches"])
    keys = [{tuple(k) for batch in r["batches"] for k in batch} for r in ranks]
    assert not keys[0] & keys[1]  # no (epoch, index) sample drawn by both ranks
    assert keys[0] | keys[1] == {(epoch, i) for epoch in (0, 1) for i in range(8)}  # = one process's epochs
    for step, (a, b) in enumerate(zip(ranks[0]["batches"], ranks[1]["batches"])):
        epoch, k = divmod(step, 2)  # each step's shares make up global batch k of that epoch
        assert {tuple(x) for x in a + b} == {(epoch, i) for i in range(4 * k, 4 * k + 4)}
    # validation: 3 cases shared 2 + 1, none repeated
    val_cases = [r["val_cases"][-1] for r in ranks]
    assert sorted(len(v) for v in val_cases) == [1, 2]
    assert len(set(val_cases[0] + val_cases[1])) == 3

    # preparation and outputs by rank 0 only
    writes = (records / "cache_writes.txt").read_text().split("\n")[:-1]
    assert len(writes) == 8 and {w.split()[0] for w in writes} == {"0"}  # the 8 phantom cases, once, by rank 0
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "splits.json").is_file()
    assert len(list(tmp_path.glob("csv/metrics.csv"))) == 1

    # the Dice (and loss) the 2 processes logged for the last epoch equal one process's on
    # last.ckpt (the weights validated at the end of that epoch), over the same 3 cases
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        (logged,) = [row for row in csv.DictReader(handle) if row.get("val/dice_mean") and row["epoch"] == "1"]
    dice, loss = _per_case_validation(cfg, tmp_path / "checkpoints" / "last.ckpt")
    for name, value in zip(("wt", "tc", "et"), dice.mean(0).tolist()):
        assert float(logged[f"val/dice_{name}"]) == pytest.approx(value, abs=1e-6)
    assert float(logged["val/dice_mean"]) == pytest.approx(dice.mean().item(), abs=1e-6)
    assert float(logged["val/loss"]) == pytest.approx(loss.mean().item(), abs=1e-6)
    # had a padding DistributedSampler repeated case 0 on rank 1, the mean would differ
    padded = torch.cat([dice, dice[:1]]).mean().item()
    assert abs(padded - dice.mean().item()) > 1e-4


@pytest.mark.slow
def test_cli_ddp_cpu_makes_one_run_folder(phantom_root, tmp_path):
    """``python train.py trainer=ddp_cpu``: Lightning re-runs the command for rank 1 inside rank 0's run folder."""
    proc = subprocess.run(
        [sys.executable, "train.py", "trainer=ddp_cpu", *TINY, f"data.root={phantom_root}", f"paths.root_dir={tmp_path}",
         "trainer.max_epochs=1", "logger=wandb"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()  # one run folder, not one per process
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "curves.png").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list(run.glob("wandb/offline-run-*"))) == 1  # one W&B run
    log_lines = (run / "train.log").read_text()
    assert log_lines.count("Fold 0/2: 4 training cases, 3 validation cases") == 2  # both ranks log into the run's file
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 2  # samples_per_epoch 8 / global batch 4, whatever the process count
    # validate_best (trainer.validate with 2 processes) logs the Dice the fit logged for the same weights
    with open(run / "csv" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/dice_mean")]
    assert len(rows) == 2 and float(rows[0]["val/dice_mean"]) == pytest.approx(float(rows[1]["val/dice_mean"]), abs=1e-6)
