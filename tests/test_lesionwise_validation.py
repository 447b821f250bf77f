"""Lesion-wise Dice during training (callbacks.lesionwise_validation): hand-built cases whose lesion-wise
Dice is worked out here from the BraTS 2023 definition, the config switch per data config, and the best
checkpoint chosen by the mean lesion-wise Dice."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_brats.training.callbacks.lesionwise_validation import LesionwiseValidation
from tests.conftest import compose_config

SHAPE = (20, 20, 20)
#: label 1 (inside TC and WT) and 2 (WT only), as nested regions
REGIONS = {"wt": [1, 2], "tc": [1]}
EVALUATION = {
    "metrics": "brats2023",
    "lesion_wise": {"dilation": 1, "min_volume": {"wt": 10, "tc": 10}, "hd95_penalty": 374},
}


def _label(*cubes):
    """A label map of ``(code, start corner, edge)`` cubes."""
    out = np.zeros(SHAPE, np.uint8)
    for code, (x, y, z), n in cubes:
        out[x:x + n, y:y + n, z:z + n] = code
    return out


def _regions(label):
    return torch.from_numpy(np.stack([np.isin(label, codes) for codes in REGIONS.values()]))


A = (1, (2, 2, 2), 4)     # 64 voxels of label 1: a WT lesion and a TC lesion
B = (2, (12, 12, 12), 3)  # 27 voxels of label 2: a WT lesion only
FP = (2, (2, 14, 14), 3)  # far (> 1 dilation) from A and B: a false positive of WT
#: case 1: A found exactly, B missed, one false positive. WT: (1 + 0) / (2 lesions + 1 FP) = 1/3;
#: TC: A exactly, nothing else = 1. Case 2: prediction = truth, 1 for both.
CASES = [(_label(A, FP), _label(A, B)), (_label(A, B), _label(A, B))]
EXPECTED = {"wt": (1 / 3 + 1) / 2, "tc": 1.0}


class _Replay(pl.LightningModule):
    """validation_step returns fixed predictions as the project's module does: ``{"pred": (B, R, X, Y, Z)}``."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def validation_step(self, batch, batch_idx):
        return {"pred": batch["pred"]}


def _loader():
    items = [{"pred": _regions(p), "target": _regions(t).float()} for p, t in CASES]
    return DataLoader(items, batch_size=1)


def test_logs_case_mean_lesionwise_dice_per_region_and_their_mean(tmp_path):
    callback = LesionwiseValidation(REGIONS, EVALUATION, enabled=True)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )
    (logged,) = trainer.validate(_Replay(), dataloaders=_loader(), verbose=False)
    assert logged["val/lesionwise_dice_wt"] == pytest.approx(EXPECTED["wt"], abs=1e-6)
    assert logged["val/lesionwise_dice_tc"] == pytest.approx(EXPECTED["tc"], abs=1e-6)
    assert logged["val/lesionwise_dice_mean"] == pytest.approx((EXPECTED["wt"] + EXPECTED["tc"]) / 2, abs=1e-6)


def test_scores_the_leaderboards_regions_not_only_the_outputs():
    """evaluation.regions: a region the network does not output (label 2 alone: 'ed') is scored from
    the label maps the outputs give back. Case 1: ED truth = B, prediction = FP: B missed, FP false
    positive, (0 + 0) / (1 + 1) = 0."""
    callback = LesionwiseValidation(
        REGIONS, {**EVALUATION, "regions": {"ed": [2]}, "lesion_wise": {**EVALUATION["lesion_wise"], "min_volume": {"ed": 10}}}
    )
    pred, truth = CASES[0]
    assert callback.score_case(_regions(pred).numpy(), _regions(truth).numpy()) == {"ed": 0.0}


def test_disabled_logs_nothing_and_legacy_definition_is_refused(tmp_path):
    callback = LesionwiseValidation(REGIONS, {"metrics": "legacy"}, enabled=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[callback], enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    (logged,) = trainer.validate(_Replay(), dataloaders=_loader(), verbose=False)
    assert not [k for k in logged if "lesionwise" in k]
    with pytest.raises(ValueError, match=r"lesionwise_validation=true needs a lesion-wise definition.*'legacy'"):
        LesionwiseValidation(REGIONS, {"metrics": "legacy"}, enabled=True)
    with pytest.raises(ValueError, match=r"min_volume has no value for regions \['tc'\]"):
        LesionwiseValidation(REGIONS, {**EVALUATION, "lesion_wise": {**EVALUATION["lesion_wise"], "min_volume": {"wt": 1}}})


@pytest.mark.parametrize(
    "data,on",
    [("brats20", False), ("brats21", False), ("msd_task01", False), ("lgg", False), ("sample", False),
     ("brats23", True), ("brats24_gli", True), ("brats_men", True), ("brats_men_rt", True), ("brats_met", True),
     ("brats_ped", True), ("brats_ssa", True)],
)
def test_switch_per_data_config_sets_the_checkpoint_monitor(tmp_path, data, on):
    """On for the 2023+ configs, off for 2018-2021, MSD and LGG; the best checkpoint follows the switch,
    and every config where it is on instantiates (its definition and parameters are complete)."""
    import hydra

    cfg = compose_config([f"data={data}", "data.root=/nowhere"], tmp_path)
    assert cfg.callbacks.lesionwise_validation.enabled is on
    assert cfg.callbacks.model_checkpoint.monitor == ("val/lesionwise_dice_mean" if on else "val/dice_mean")
    callback = hydra.utils.instantiate(cfg.callbacks.lesionwise_validation)
    assert callback.enabled is on
    if on:  # a user can turn it off, and the monitor follows
        off = compose_config([f"data={data}", "data.root=/nowhere", "data.evaluation.lesionwise_validation=false"], tmp_path)
        assert off.callbacks.model_checkpoint.monitor == "val/dice_mean"

@pytest.mark.slow
def test_training_keeps_the_best_checkpoint_by_mean_lesionwise_dice(phantom_root, tmp_path):
    """Two short epochs on the phantoms with the switch on: both validations log the lesion-wise Dice,
    and the checkpoint kept as best is the epoch with the higher val/lesionwise_dice_mean."""
    from lightning_brats.cli.train import train

    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.samples_per_epoch=4",
         "data.patch_size=[32,32,32]", "trainer.max_epochs=2", "logger=csv", "model.net.base_filters=8",
         "data.evaluation.metrics=brats2023", "data.evaluation.lesionwise_validation=true", "validate_best=false"],
        tmp_path, tmp_path / "cache",
    )
    train(cfg)
    (metrics_csv,) = tmp_path.glob("**/metrics.csv")
    with open(metrics_csv) as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/lesionwise_dice_mean")]
    assert len(rows) == 2
    for row in rows:
        regions = [float(row[f"val/lesionwise_dice_{r}"]) for r in ("wt", "tc", "et")]
        assert float(row["val/lesionwise_dice_mean"]) == pytest.approx(sum(regions) / 3, abs=1e-6)
    scores = {int(r["epoch"]): float(r["val/lesionwise_dice_mean"]) for r in rows}
    best_epoch = max(scores, key=lambda e: (scores[e], -e))  # ties: the first stays best
    assert [p.name for p in (tmp_path / "checkpoints").glob("epoch_*.ckpt")] == [f"epoch_{best_epoch:03d}.ckpt"]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["callbacks"]
    (best,) = [v for k, v in state.items() if k.startswith("ModelCheckpoint") and "val/lesionwise_dice_mean" in k]
    assert float(best["best_model_score"]) == pytest.approx(scores[best_epoch], abs=1e-6)
