"""``data.fold=all`` (nnU-Net's fold ``all``): every labelled case trains; the validation cases (fold 0's)
are training cases, which the run's ``splits.json``, log and model card say; the checkpoint is the final
epoch's, not one selected on training cases; ``eval.py cases=held_out`` refuses such a model."""

from __future__ import annotations

import json

import hydra
import pytest
import torch

from lightning_brats.data.readers import DataError
from lightning_brats.data.splits import FOLD_ALL, FOLD_ALL_NOTE, check_fold, read_splits
from tests.conftest import compose_config

TINY = ["data=sample", "data.num_folds=4", "data.patch_size=[32,32,32]", "data.batch_size=2", "data.samples_per_epoch=2",
        "model.net.base_filters=4", "model.net.depth=3", "inference.overlap=0.25", "logger=csv"]


def _datamodule(phantom_root, tmp_path, extra):
    cfg = compose_config([*TINY, f"data.root={phantom_root}", *extra], tmp_path, tmp_path / "cache")
    return hydra.utils.instantiate(cfg.data)


def test_a_fold_is_a_number_below_num_folds_or_all(phantom_root, tmp_path):
    """Bad values name data.fold and what it may be; ``all`` and a fold number given as text are accepted."""
    assert check_fold(FOLD_ALL, 5) == FOLD_ALL and check_fold("ALL", 5) == FOLD_ALL and check_fold("3", 5) == 3
    assert check_fold(9, None) == 9  # a splits file decides how many folds there are (checked when read)
    for bad, words in ((7, "data.fold=7 with data.num_folds=5: expected a fold in [0, 4], or data.fold=all"),
                       ("foo", "data.fold='foo': expected a fold number in [0, 4], or data.fold=all"),
                       (-1, "data.fold=-1: expected a fold number in [0, 4]"), (1.5, "data.fold=1.5: expected")):
        with pytest.raises(ValueError) as info:
            check_fold(bad, 5)
        assert words in str(info.value)
        with pytest.raises(Exception) as info:  # through the config, as train.py builds it
            _datamodule(phantom_root, tmp_path, ["data.num_folds=5", f"data.fold={bad}"])
        assert words in str(info.value)
    assert _datamodule(phantom_root, tmp_path, ["data.fold=all"]).fold == FOLD_ALL


def test_fold_all_trains_on_every_case_and_its_splits_file_says_so(phantom_root, tmp_path):
    ids = sorted(p.name for p in phantom_root.iterdir() if p.is_dir())
    dm = _datamodule(phantom_root, tmp_path, ["data.fold=all"])
    dm.prepare_data()
    dm.setup("fit")
    folds = read_splits(dm.folds_path)  # the 4 folds drawn as for any fold
    assert dm.train_ids == ids and len(dm.train_set.cases) == len(ids)
    assert dm.val_ids == sorted(folds[0]["val"]) and set(dm.val_ids) < set(dm.train_ids)  # training cases
    assert dm.splits_path.name == "splits_4folds_seed12345_all.json" and dm.splits_path != dm.folds_path
    record = json.loads(dm.splits_path.read_text())
    assert (record["fold"], record["note"], record["train"], record["val"]) == (FOLD_ALL, FOLD_ALL_NOTE, ids, dm.val_ids)
    assert "training cases" in record["note"] and read_splits(dm.splits_path) == folds  # still a splits file

    # a user's splits file (nnU-Net's list): every labelled case trains, its fold 0's validation cases validate
    own = tmp_path / "own_splits.json"
    own.write_text(json.dumps([{"train": ids[3:6], "val": ids[:2]}]))
    dm = _datamodule(phantom_root, tmp_path, ["data.fold=all", f"data.splits_file={own}"])
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_ids == ids and dm.val_ids == ids[:2]
    assert json.loads(dm.splits_path.read_text())["folds_file"] == str(own)
    # and a numbered fold beyond the file's is an error naming it
    dm = _datamodule(phantom_root, tmp_path, ["data.fold=1", f"data.splits_file={own}"])
    dm.prepare_data()
    with pytest.raises(DataError, match=r"own_splits.json: data.fold=1 but the file holds 1 folds"):
        dm.setup("fit")


def test_fold_all_keeps_the_final_checkpoint_not_one_selected_on_training_cases(tmp_path):
    for extra, monitor in (([], "val/dice_mean"), (["data.fold=all"], None), (["data=brats23", "data.root=x"], "val/lesionwise_dice_mean"),
                           (["data=brats23", "data.root=x", "data.fold=all"], None)):
        checkpoint = compose_config(extra, tmp_path).callbacks.model_checkpoint
        assert checkpoint.monitor == monitor, extra
        assert checkpoint.save_on_train_epoch_end is (True if monitor is None else None)


@pytest.mark.slow
def test_a_fold_all_run_says_its_validation_is_on_training_cases(phantom_root, tmp_path):
    from lightning_brats.cli.eval import held_out_cases
    from lightning_brats.cli.train import run_training

    cfg = compose_config([*TINY, f"data.root={phantom_root}", "data.fold=all", "trainer.max_epochs=2", "validate_best=false"],
                         tmp_path, tmp_path / "cache")
    result = run_training(cfg)
    ids = sorted(p.name for p in phantom_root.iterdir() if p.is_dir())
    assert result.datamodule.train_ids == ids
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert splits["fold"] == FOLD_ALL and splits["train"] == ids and splits["note"] == FOLD_ALL_NOTE
    card = (tmp_path / "model_card.md").read_text()
    assert "fold all: every labelled case trains" in card and "**Validation on training cases.**" in card
    assert "the final epoch's weights (no selection by validation)" in card
    # the kept checkpoint is the final epoch, the same weights as last.ckpt
    (kept,) = (tmp_path / "checkpoints").glob("epoch_*.ckpt")
    assert result.best_checkpoint == kept and kept.name == "epoch_001.ckpt"
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    final = torch.load(kept, weights_only=True, map_location="cpu")
    assert final["global_step"] == last["global_step"] == 2
    assert all(torch.equal(final["state_dict"][k], v) for k, v in last["state_dict"].items())
    with pytest.raises(DataError, match="trained with data.fold=all, on every labelled case, so it has no held-out cases"):
        held_out_cases(kept)
