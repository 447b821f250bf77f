"""The Python API (lightning_brats.api): the command lines' behaviour from a notebook or a script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_brats import api
from lightning_brats.data.readers import DataError
from tests.conftest import REPO

TINY = ["data=sample", "data.num_folds=4", "data.max_val_cases=1", "data.patch_size=[32,32,32]", "data.samples_per_epoch=4",
        "model.net.base_filters=4", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.precision=32",
        "logger=csv", "validate_best=false", "data.num_workers=0", "seed=7"]


def test_compose_gives_what_the_command_line_runs():
    cfg = api.compose(["experiment=brats_cpu", "data.root=/data/x"])
    assert cfg.data.root == "/data/x" and cfg.model.name == "unet2d_ds_w16" and cfg.task_name == "brats_cpu"
    assert cfg.hydra.runtime.choices["experiment"] == "brats_cpu"  # the hydra node: run folder, logging, choices
    assert api.compose(["ckpt_path=a.ckpt", "input=b"], "predict").input == "b"
    with pytest.raises(TypeError, match="list of strings"):
        api.train("data=sample")


def test_a_bad_data_root_is_an_exception_not_an_exit(tmp_path):
    with pytest.raises(DataError, match="nonexistent"):
        api.train(["data=brats20", f"data.root={tmp_path / 'nonexistent'}", f"paths.root_dir={tmp_path}"])
    # the run folder was made, with the composed configs, as on the command line
    run = next((tmp_path / "logs" / "train" / "runs").iterdir())
    assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())[0] == "data=brats20"


def _cli_env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_the_api_and_train_py_are_one_code_path(phantom_root, tmp_path):
    """The same overrides through api.train and through `python train.py`: the same composed config and
    the same trained weights."""
    overrides = [*TINY, f"data.root={phantom_root}", f"paths.cache_dir={tmp_path / 'cache'}"]
    result = api.train([*overrides, f"paths.root_dir={tmp_path / 'api'}"])
    assert result.run_dir.parent == (tmp_path / "api" / "logs" / "train" / "runs").resolve()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (result.run_dir / ".hydra" / name).is_file()
    assert (result.run_dir / "train.log").read_text().count("Final metrics") == 1
    assert (result.run_dir / "checkpoints" / "last.ckpt").is_file() and result.best_checkpoint.is_file()
    assert 0.0 <= result.metrics["val/dice_mean"] <= 1.0 and result.module.trainer is not None
    assert result.datamodule.val_ids

    cli_root = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "train.py", *overrides, f"paths.root_dir={cli_root}"], cwd=REPO, env=_cli_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_run = next((cli_root / "logs" / "train" / "runs").iterdir())

    def job_config(run: Path) -> dict:
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        config["paths"].pop("root_dir")
        return config

    assert job_config(cli_run) == job_config(result.run_dir)
    weights = [torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
               for run in (result.run_dir, cli_run)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_predict_in_memory_show_and_evaluate(phantom_checkpoint, phantom_root, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    case = min(p for p in phantom_root.iterdir() if p.is_dir())
    overrides = ["inference.device=cpu", "inference.flip_tta=false", f"paths.root_dir={tmp_path}"]
    result = api.predict(phantom_checkpoint, input=case, overrides=overrides)
    assert list(result.cases) == [case.name] and not result.files
    label = result[case.name].label
    truth = next(case.glob("*seg.nii*"))
    import nibabel as nib

    assert label.shape == nib.load(str(truth)).shape and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 1, 2, 4}
    figure = api.show(result, case.name, truth=truth)
    assert len(figure.axes) == 6  # three views, ground truth | prediction
    with pytest.raises(KeyError, match="not predicted in memory"):
        api.show(result, "elsewhere")

    written = api.predict(phantom_checkpoint, input=case, output_dir=tmp_path / "preds", overrides=overrides)
    assert written.files and all(path.is_file() for path in written.files.values())
    # the in-memory label map is the file's
    np.testing.assert_array_equal(np.asarray(nib.load(str(written.files[case.name])).dataobj), label)

    table = api.evaluate([f"predictions={tmp_path / 'preds'}", "data=sample", f"ground_truth={phantom_root}",
                          f"cases=[{case.name}]", f"paths.root_dir={tmp_path}", "pictures=false"])
    assert set(table["case_id"]) == set(written.files)
    assert {"dice_wt", "dice_tc", "dice_et"} <= set(table.columns)
    assert table["dice_wt"].between(0, 1).all() and table.attrs["summary"]
