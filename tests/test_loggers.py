"""logger=tensorboard, logger=mlflow, logger=many: a short run on phantoms leaves each logger's files,
with the validation Dice, the validation pictures, curves.png and the model card readable from them.

(Lightning swaps every logger for a DummyLogger under fast_dev_run, so these are one-epoch runs.)
"""

from __future__ import annotations

import csv

import pytest
import torch

from lightning_brats.cli.train import train
from tests.conftest import compose_config


def _short_run(phantom_root, tmp_path, logger: str) -> dict:
    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.samples_per_epoch=2",
         "data.patch_size=[32,32,32]", "trainer.max_epochs=1", "model.net.base_filters=8", "validate_best=false",
         "model.num_val_images=1", f"logger={logger}"],
        tmp_path, tmp_path / "cache",
    )
    return train(cfg)


def _csv_dice(tmp_path) -> float:
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        return float([r["val/dice_mean"] for r in csv.DictReader(handle) if r.get("val/dice_mean")][-1])


def _parameters(tmp_path) -> int:
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    return sum(v.numel() for k, v in checkpoint["state_dict"].items() if k.startswith("net."))


def _check_tensorboard(tmp_path, metrics: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"val/dice_mean", "val/dice_wt", "val/dice_tc", "val/dice_et", "train/loss_epoch"} <= set(tags["scalars"])
    assert events.Scalars("val/dice_mean")[-1].value == pytest.approx(metrics["val/dice_mean"], abs=1e-6)
    assert events.Scalars("val/dice_mean")[-1].value == pytest.approx(_csv_dice(tmp_path), abs=1e-5)
    pictures = [t for t in tags["images"] if t.startswith("val/case_")]
    assert len(pictures) == 1  # model.num_val_images=1
    picture = events.Images(pictures[0])[-1]
    assert picture.width > 100 and picture.height > 100 and picture.encoded_image_string[:4] == b"\x89PNG"
    assert "curves.png" in tags["images"]
    assert any(t.startswith("model_card.md") for t in tags["tensors"])  # add_text stores a text tensor


def _check_mlflow(tmp_path, metrics: dict) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "lightning-brats"]
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "val/dice_mean")
    assert history[-1].value == pytest.approx(metrics["val/dice_mean"], abs=1e-6)
    assert history[-1].value == pytest.approx(_csv_dice(tmp_path), abs=1e-5)
    assert int(run.data.params["card/parameters"]) == _parameters(tmp_path)
    assert run.data.params["card/synthetic_data"] == "True"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "model_card.md", "images"} <= artifacts
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any(p.startswith("images/val~case_") and p.endswith(".png") for p in images)
    assert (tmp_path / "mlartifacts").is_dir()  # the artifacts stay in the run folder


@pytest.mark.slow
def test_tensorboard_run_leaves_event_files(phantom_root, tmp_path):
    metrics = _short_run(phantom_root, tmp_path, "tensorboard")
    _check_tensorboard(tmp_path, metrics)


@pytest.mark.slow
def test_mlflow_run_leaves_sqlite_store(phantom_root, tmp_path):
    metrics = _short_run(phantom_root, tmp_path, "mlflow")
    _check_mlflow(tmp_path, metrics)


@pytest.mark.slow
def test_many_loggers_each_get_metrics_pictures_and_files(phantom_root, tmp_path):
    from tests.wandb_records import logged_config, logged_history

    metrics = _short_run(phantom_root, tmp_path, "many")
    _check_tensorboard(tmp_path, metrics)
    _check_mlflow(tmp_path, metrics)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = logged_history(run_file)
    assert [r["val/dice_mean"] for r in history if "val/dice_mean" in r][-1] == pytest.approx(metrics["val/dice_mean"])
    logged = {k: v for row in history for k, v in row.items()}
    pictures = [v for k, v in logged.items() if k.startswith("val/case_") and k.endswith("/filenames")]
    assert pictures and (run_file.parent / "files" / pictures[0][0]).is_file()
    assert logged_config(run_file)["card/parameters"] == _parameters(tmp_path)
    for name in ("model_card.md", "curves.png"):  # run.save copies the files into the offline run
        assert (run_file.parent / "files" / name).is_file()
