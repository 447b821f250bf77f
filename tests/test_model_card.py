"""model_card.md: written by every training run, appended to by eval.py."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml

from lightning_brats.cli.train import train
from lightning_brats.training.callbacks.model_card import append_evaluation, cpu_description
from tests.conftest import compose_config


def test_cpu_flags_agree_with_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = next(line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
    described = cpu_description()
    assert ("avx2" in described["cpu_isa"]) == ("avx2" in flags)
    assert ("avx512f" in described["cpu_isa"]) == ("avx512f" in flags)
    assert ("avx512_bf16" in described["cpu_isa"]) == ("avx512_bf16" in flags)
    assert ("amx_bf16" in described["cpu_isa"]) == ("amx_bf16" in flags)
    assert described["cpu"]


def test_append_evaluation_adds_a_table_to_the_runs_card(tmp_path, caplog):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model_card.md").write_text("# Model card\n\nbody\n")
    summary = [
        {"metric": "dice", "region": "wt", "cases": 3, "mean": 0.8, "std": 0.05, "median": 0.81, "q25": 0.7, "q75": 0.9},
        {"metric": "hd95", "region": "wt", "cases": 3, "mean": float("nan"), "std": 1.5, "median": 4.0, "q25": 3, "q75": 5},
    ]
    written = append_evaluation(str(run / "checkpoints" / "epoch_001.ckpt"), summary, "3 cases of `/data`")
    assert written == [run / "model_card.md"]
    text = (run / "model_card.md").read_text()
    assert text.startswith("# Model card\n\nbody\n\n## Evaluation ")
    assert "3 cases of `/data`" in text
    assert "| dice | wt | 3 | 0.8000 | 0.0500 | 0.8100 |" in text
    assert "| hd95 | wt | 3 | nan | 1.5000 | 4.0000 |" in text
    # a second evaluation is appended after the first
    append_evaluation(run / "checkpoints" / "epoch_001.ckpt", summary[:1], "again")
    assert (run / "model_card.md").read_text().count("## Evaluation ") == 2
    # a run without a card: nothing written, a warning
    with caplog.at_level(logging.WARNING):
        assert append_evaluation(tmp_path / "old" / "checkpoints" / "a.ckpt", summary, "x") == []
    assert "does not exist" in caplog.text and not (tmp_path / "old").exists()


@pytest.mark.slow
def test_training_run_writes_model_card(phantom_root, tmp_path):
    overrides = ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.samples_per_epoch=4",
                 "data.patch_size=[32,32,32]", "trainer.max_epochs=2", "model.net.base_filters=8", "logger=csv"]
    cfg = compose_config(overrides, tmp_path, tmp_path / "cache")
    metrics = train(cfg)
    card = (tmp_path / "model_card.md").read_text()
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    parameters = sum(v.numel() for k, v in checkpoint["state_dict"].items() if k.startswith("net."))
    # data: config name, root, case count (8 phantoms, 4 folds: 6 + 2), fold, split file
    assert "dataset config: `data=sample`" in card
    assert f"root: `{phantom_root.resolve()}`" in card
    assert "labelled cases: 8 (6 training, 2 validation)" in card
    assert "fold 0 of 4; split file: `" in card and "splits_4folds_seed12345.json" in card
    assert "SYNTHETIC phantoms" in card and "Not a medical device" in card
    # network and training length: 2 epochs of 4 samples in batches of 2 = 4 steps
    assert f"{parameters:,} parameters" in card
    steps = 2 * 4 // cfg.data.batch_size
    assert f"- {steps} steps, 2 epochs (max_epochs 2)" in card
    wall = float(re.search(r"wall time (\d+) s", card).group(1))
    assert wall > 0
    # the precision that ran: train() writes trainer.precision=auto's choice back (Lightning spells 32 "32-true")
    ran = {"32": "32-true"}.get(str(cfg.trainer.precision), str(cfg.trainer.precision))
    assert str(cfg.trainer.precision) in ("32", "bf16-mixed") and f"precision: {ran}" in card and "CPU: " in card
    # metrics: the last validation as the CSV logger recorded it, and the best checkpoint's
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        last = [float(r["val/dice_mean"]) for r in csv.DictReader(handle) if r.get("val/dice_mean")]
    # the CSV's last row is the best checkpoint's validation (validate_best=true), the one before the last epoch's
    assert f"| val/dice_mean | {last[-2]:.4f} | {last[-1]:.4f} |" in card
    assert metrics["val/dice_mean"] == pytest.approx(last[-1])
    # the command: the composed overrides, quoted for a shell where they hold glob characters
    quoted = [f"'{o}'" if "[" in o else o for o in overrides]
    assert "lightning-brats-train " + " ".join(quoted) in card
    assert re.search(r"git commit: ([0-9a-f]{40}|unknown)", card)
    # the card's fields reach the loggers' hyperparameters
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["card/parameters"] == parameters and hparams["card/cases"] == 8
    assert hparams["card/steps"] == steps and hparams["card/synthetic_data"] is True


@pytest.mark.slow
def test_eval_with_checkpoint_appends_to_its_card(phantom_checkpoint, phantom_root, tmp_path):
    from lightning_brats.cli.eval import evaluate
    from tests.conftest import compose_tool_config

    card = phantom_checkpoint.parent.parent / "model_card.md"
    before = card.read_text()
    assert "## Evaluation" not in before
    cfg = compose_tool_config(
        "eval", [f"ckpt_path={phantom_checkpoint}", f"ground_truth={phantom_root}", "cases=[BraTS20_Training_001]",
                 "logger=csv", "pictures=false", "overwrite=true"],
        tmp_path,
    )
    result = evaluate(cfg)
    after = card.read_text()
    assert after.startswith(before.rstrip("\n")) and "## Evaluation " in after
    dice_wt = result["rows"][0]["dice_wt"]  # one case: the mean is that case's Dice
    assert f"| dice | wt | 1 | {dice_wt:.4f} |" in after
    assert f"1 cases of `{phantom_root}`" in after
