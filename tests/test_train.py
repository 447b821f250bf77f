"""train.py end to end: the CLI, fast_dev_run on real data (2D and 3D), W&B offline, checkpoints."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from lightning_brats.cli.train import train
from lightning_brats.data.readers import DataError
from lightning_brats.training.module import CONFIG_KEY
from tests.conftest import BRATS_MODALITIES, REPO, compose_config
from tests.wandb_records import logged_config, logged_history


@pytest.mark.slow
def test_help_lists_config_groups_and_options():
    """Each group's line of ``--help`` lists exactly the group's config files, whole, in name order."""
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    lines = [line.strip() for line in out.splitlines()]
    for group in ("data", "model", "experiment", "logger", "trainer"):
        names = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
        assert len(names) >= 3, group
        (listed,) = [line for line in lines if line.startswith(f"{group}: ")]
        assert listed == f"{group}: {', '.join(names)}"


@pytest.mark.slow
def test_cli_fast_dev_run_on_generated_phantoms(tmp_path):
    """``python train.py`` on the embedded default writes phantoms and says they are synthetic."""
    proc = subprocess.run(
        [sys.executable, "train.py", "debug=fast_dev_run", f"paths.root_dir={tmp_path}", "data.phantoms.num_cases=4",
         "data.num_folds=2", "trainer.accelerator=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SYNTHETIC phantoms" in proc.stderr + proc.stdout
    assert len(list((tmp_path / "data" / "brats_sample_phantoms").glob("BraTS20_Training_*/*_t1ce.nii.gz"))) == 4
    assert list((tmp_path / "logs" / "debug" / "runs").glob("*/debug.log"))


def test_missing_data_root_fails_before_training(tmp_path):
    cfg = compose_config(["data=brats20", f"data.root={tmp_path / 'no_such_dir'}"], tmp_path)
    with pytest.raises(DataError, match=r"no_such_dir does not exist.*<case>_flair, <case>_t1"):
        train(cfg)


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("sampling,model", [("3d", "unet3d"), ("2d", "unet2d")])
def test_fast_dev_run_on_real_cases(brats2018_root, cache_dir, tmp_path, sampling, model):
    cfg = compose_config(
        ["experiment=brats_cpu_3d", f"data.root={brats2018_root}", "debug=fast_dev_run", f"model={model}",
         f"data.sampling={sampling}"],
        tmp_path, cache_dir,
    )
    metrics = train(cfg)
    assert {"train/loss", "val/dice_wt", "val/dice_tc", "val/dice_et", "val/dice_mean"} <= set(metrics)
    # the mean is the mean of the three regions, each a Dice in [0, 1]; the loss a finite number
    regions = [metrics[f"val/dice_{r}"] for r in ("wt", "tc", "et")]
    assert all(0.0 <= d <= 1.0 for d in regions) and math.isfinite(metrics["train/loss"])
    assert metrics["val/dice_mean"] == pytest.approx(sum(regions) / 3, abs=1e-6)


@pytest.mark.slow
def test_wandb_offline_run_csv_and_checkpoint(phantom_root, tmp_path):
    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.samples_per_epoch=4",
         "data.patch_size=[32,32,32]", "trainer.max_epochs=2", "logger=wandb"],
        tmp_path, tmp_path / "cache",
    )
    metrics = train(cfg)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = logged_history(run_file)
    logged = {k: v for row in history for k, v in row.items()}
    for key in ("val/dice_wt", "val/dice_tc", "val/dice_et", "val/dice_mean", "train/loss_epoch"):
        assert key in logged
    assert [row["val/dice_mean"] for row in history if "val/dice_mean" in row][-1] == pytest.approx(metrics["val/dice_mean"])
    # the validation pictures: PNGs in the offline run, referenced from the history
    pictures = [v for k, v in logged.items() if k.startswith("val/case_") and k.endswith("/filenames")]
    assert pictures and (run_file.parent / "files" / pictures[0][0]).is_file()
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["val/dice_mean"] for r in rows if r.get("val/dice_mean")]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    config = checkpoint[CONFIG_KEY]
    assert config["data"]["root"] == str(phantom_root) and config["data"]["preprocessing"]["modalities"] == BRATS_MODALITIES
    assert config["model"]["net"]["spatial_dims"] == 3 and checkpoint["epoch"] == 1
    # the network's description at start, in W&B's config and the CSV logger's hparams
    parameters = sum(v.numel() for k, v in checkpoint["state_dict"].items() if k.startswith("net."))
    described = logged_config(run_file)
    assert described["model/parameters"] == parameters and described["model/name"] == "unet3d"
    assert described["model/input_shape"] == [cfg.data.batch_size, 4, 32, 32, 32]
    assert described["model/output_shape"] == [cfg.data.batch_size, 3, 32, 32, 32]
    assert yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())["model/parameters"] == parameters
    assert list((tmp_path / "checkpoints").glob("epoch_*.ckpt"))
    assert len(json.loads((tmp_path / "splits.json").read_text())["folds"]) == 4  # the folds, copied into the run
    # curves.png for offline users: a real PNG drawn from the run's epochs
    from PIL import Image

    with Image.open(tmp_path / "curves.png") as picture:
        assert picture.format == "PNG" and picture.size == (1000, 400)
        assert len(picture.convert("RGB").getcolors(maxcolors=100000)) > 20  # axes, lines and labels, not a blank


@pytest.mark.slow
def test_last_checkpoint_follows_every_epoch(phantom_root, tmp_path):
    """last.ckpt is the latest epoch even when validation did not run or did not improve."""
    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.samples_per_epoch=4",
         "data.patch_size=[32,32,32]", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2", "logger=csv",
         "model.net.base_filters=8", "validate_best=false"],
        tmp_path, tmp_path / "cache",
    )
    train(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == 2 and last["global_step"] == 3 * 4 // cfg.data.batch_size
    # validated after epoch 1 (check_val_every_n_epoch=2) and at the last planned step (epoch 2), never after epoch 0
    (best,) = (tmp_path / "checkpoints").glob("epoch_*.ckpt")
    assert best.name in ("epoch_001.ckpt", "epoch_002.ckpt")
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        validated = [int(row["epoch"]) for row in csv.DictReader(handle) if row.get("val/dice_mean")]
    assert validated == [1, 2]
