"""Scaling out: Hydra multiruns (one folder, checkpoints and W&B run per job, a shared W&B group,
override tags), the Optuna search (hparams_search=brats_optuna), ``lightning-brats summarize`` and
the SLURM launcher config (composed and rendered into an sbatch script; no SLURM here)."""

from __future__ import annotations

import csv
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from lightning_brats.cli.summarize import SummaryError, summarize_multirun
from lightning_brats.cli.train import CONFIG_DIR
from lightning_brats.training.module import CONFIG_KEY
from tests.conftest import REPO, compose_config
from tests.wandb_records import logged_history, read_records

# one short epoch of a small 3D U-Net on the session's phantoms (8 cases, 2 folds of 4)
TINY = ["data=sample", "data.num_folds=2", "data.patch_size=[32,32,32]", "data.samples_per_epoch=2",
        "trainer.max_epochs=1", "trainer.accelerator=cpu", "validate_best=false"]
DICE = ["val/dice_wt", "val/dice_tc", "val/dice_et", "val/dice_mean"]


def _require(module: str, extra: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        pytest.fail(f"{module} is missing ({exc}); install the extra: pip install -e .[{extra}]", pytrace=False)


def _train(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _final_csv_dice(job_dir: Path) -> dict[str, float]:
    """The last validation row of a job's csv/metrics.csv, read independently of summarize."""
    with open(job_dir / "csv" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val/dice_mean")]
    return {k: float(rows[-1][k]) for k in DICE}


def _wandb_run_record(job_dir: Path):
    (run_file,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    return run_file, next(r.run for r in read_records(run_file) if r.WhichOneof("record_type") == "run")


@pytest.fixture(scope="module")
def fold_multirun(phantom_root, tmp_path_factory) -> Path:
    """``python train.py -m data.fold=0,1`` with W&B offline: the sweep folder (2 jobs)."""
    root = tmp_path_factory.mktemp("fold_multirun")
    sweep = root / "multirun"
    _train(["-m", "data.fold=0,1", f"data.root={phantom_root}", *TINY, "model.net.base_filters=4", "logger=wandb",
            f"paths.root_dir={root}", f"paths.cache_dir={root / 'cache'}", f"hydra.sweep.dir={sweep}"])
    return sweep


@pytest.mark.slow
def test_multirun_jobs_get_their_own_folders(fold_multirun):
    assert (fold_multirun / "multirun.yaml").is_file()
    for fold in (0, 1):
        job = fold_multirun / str(fold)
        assert f"data.fold={fold}" in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert (job / "train.log").is_file() and (job / "csv" / "metrics.csv").is_file()
        checkpoint = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        assert checkpoint[CONFIG_KEY]["data"]["fold"] == fold  # each job trained its own fold
        assert len(list(job.glob("wandb/offline-run-*/run-*.wandb"))) == 1
    # two different validation sets, two different results
    assert _final_csv_dice(fold_multirun / "0") != _final_csv_dice(fold_multirun / "1")


@pytest.mark.slow
def test_wandb_runs_of_a_sweep_share_a_group_and_carry_override_tags(fold_multirun):
    records = {fold: _wandb_run_record(fold_multirun / str(fold))[1] for fold in (0, 1)}
    assert records[0].run_group == records[1].run_group == f"train-{fold_multirun.name}"
    assert records[0].run_id != records[1].run_id
    for fold, run in records.items():
        tags = list(run.tags)
        assert tags[0] == "dev" and f"data.fold={fold}" in tags and "model.net.base_filters=4" in tags
        assert f"data.fold={1 - fold}" not in tags
        assert all(0 < len(tag) <= 64 for tag in tags)  # W&B refuses longer tags


def test_single_run_has_no_group_and_tags_its_overrides(tmp_path):
    cfg = compose_config(["model=unet2d", "data.fold=1", f"data.root={'x' * 80}"], tmp_path)
    assert cfg.logger.wandb.group == ""
    assert list(cfg.logger.wandb.tags) == ["dev", "model=unet2d", "data.fold=1"]  # the 90-character override left out
    # outside a Hydra app (compose without Hydra's config, as predict/eval tests do): no group, the plain tags
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        plain = compose("train", overrides=["model=unet2d", f"paths.output_dir={tmp_path}"])
    assert plain.logger.wandb.group == "" and list(plain.logger.wandb.tags) == ["dev"]


@pytest.mark.slow
def test_summarize_a_real_multirun(fold_multirun):
    proc = subprocess.run([sys.executable, "-m", "lightning_brats.cli", "summarize", str(fold_multirun)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data.fold=0" in proc.stdout and "mean ± std over data.fold" in proc.stdout
    per_job = {fold: _final_csv_dice(fold_multirun / str(fold)) for fold in (0, 1)}
    # the final values are what W&B logged last, too
    for fold, dice in per_job.items():
        history = logged_history(_wandb_run_record(fold_multirun / str(fold))[0])
        assert [row["val/dice_mean"] for row in history if "val/dice_mean" in row][-1] == pytest.approx(dice["val/dice_mean"])
    with open(fold_multirun / "summary_jobs.csv") as handle:
        jobs = list(csv.DictReader(handle))
    assert [(j["job"], j["overrides"]) for j in jobs] == [("0", "data.fold=0"), ("1", "data.fold=1")]
    for job in jobs:
        assert {k: float(job[k]) for k in DICE} == pytest.approx(per_job[int(job["job"])])
    with open(fold_multirun / "summary.csv") as handle:
        (group,) = list(csv.DictReader(handle))
    assert group["group"] == "all jobs" and group["jobs"] == "2" and group["folds"] == "0 1"
    for metric in DICE:
        values = [per_job[0][metric], per_job[1][metric]]
        assert float(group[f"{metric}_mean"]) == pytest.approx(statistics.mean(values))
        assert float(group[f"{metric}_std"]) == pytest.approx(statistics.stdev(values))
    assert not list(fold_multirun.glob(".tmp-*"))  # written through a temporary file


def _fake_job(root: Path, name: str, overrides: list[str], dice: dict[str, float] | None) -> None:
    """A job folder as Hydra and the CSV logger leave it: an early and a final validation row."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"regions": {"wt": [1], "tc": [1], "et": [4]}}}, sort_keys=False))
    (job / "csv").mkdir()
    columns = ["epoch", "step", "train/loss", *sorted(DICE)]
    lines = [",".join(columns), "0,9,0.9,,,,"]
    if dice is not None:
        lines.append("0,9,," + ",".join("0.01" for _ in DICE))  # an earlier validation, superseded
        lines.append("1,19,," + ",".join(str(dice[k]) for k in sorted(DICE)))
        lines.append("1,19,0.5,,,,")  # a train row after it
    (job / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_summarize_groups_models_over_folds(tmp_path):
    expected = {}
    for num, (model, fold) in enumerate((m, f) for m in ("unet2d", "unet3d") for f in range(3)):
        dice = {"val/dice_wt": 0.8 + 0.01 * num, "val/dice_tc": 0.7 - 0.02 * fold, "val/dice_et": 0.5 + 0.03 * fold * num}
        dice["val/dice_mean"] = sum(dice.values()) / 3
        expected.setdefault(model, []).append(dice)
        _fake_job(tmp_path, str(num), [f"model={model}", f"data.fold={fold}", "trainer.max_epochs=2"], dice)
    _fake_job(tmp_path, "6", ["model=segresnet", "data.fold=0", "trainer.max_epochs=2"], None)  # never validated
    # a fold-all job validated on its training cases: high Dice that must not enter unet2d's cross-validation mean
    _fake_job(tmp_path, "7", ["model=unet2d", "data.fold=all", "trainer.max_epochs=2"], {k: 0.99 for k in DICE})
    summary = summarize_multirun(tmp_path)
    assert [j.name for j in summary.jobs] == ["0", "1", "2", "3", "4", "5"] and summary.skipped[0][0] == "6"
    assert summary.skipped[1] == ("7", "data.fold=all validates on training cases: not a cross-validation estimate")
    assert summary.varying == ["model", "data.fold"]  # trainer.max_epochs is common to all jobs
    assert summary.metrics == DICE  # regions in the config's order, the mean last
    assert [(g["group"], g["jobs"], g["folds"]) for g in summary.groups] == [("model=unet2d", 3, "0 1 2"),
                                                                            ("model=unet3d", 3, "0 1 2")]
    for group, model in zip(summary.groups, ("unet2d", "unet3d")):
        for metric in DICE:
            values = [d[metric] for d in expected[model]]
            assert group[f"{metric}_mean"] == pytest.approx(statistics.mean(values))
            assert group[f"{metric}_std"] == pytest.approx(statistics.stdev(values))
    # the command writes both tables; a group of one job has an empty std
    proc = subprocess.run([sys.executable, "-m", "lightning_brats.cli", "summarize", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "skipped job 6" in proc.stdout and "skipped job 7" in proc.stdout
    with open(tmp_path / "summary.csv") as handle:
        assert [r["group"] for r in csv.DictReader(handle)] == ["model=unet2d", "model=unet3d"]
    single = summarize_multirun(tmp_path, fold_key="model")  # group by fold instead: 2 models per fold
    assert [(g["group"], g["folds"]) for g in single.groups] == [("data.fold=0", "unet2d unet3d"),
                                                                ("data.fold=1", "unet2d unet3d"),
                                                                ("data.fold=2", "unet2d unet3d")]
    _fake_job(tmp_path / "lone", "0", ["data.fold=0"], {k: 0.5 for k in DICE})
    assert math.isnan(summarize_multirun(tmp_path / "lone").groups[0]["val/dice_mean_std"])


@pytest.mark.slow
def test_summarize_names_a_folder_without_finished_jobs(tmp_path):
    with pytest.raises(SummaryError, match=rf"{tmp_path} holds no job folder"):
        summarize_multirun(tmp_path)
    _fake_job(tmp_path, "0", ["data.fold=0"], None)
    with pytest.raises(SummaryError, match=rf"{tmp_path} holds no finished job .*0: no val/dice_mean in csv/metrics.csv"):
        summarize_multirun(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lightning_brats.cli", "summarize", str(tmp_path / "missing")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and "missing is not a folder" in proc.stderr


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(phantom_root, tmp_path):
    _require("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper", "sweep")
    import optuna

    sweep = tmp_path / "optuna"
    # SQLite storage exercises the sqlalchemy/alembic pins of the sweep extra
    proc = _train(["hparams_search=brats_optuna", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
                   "hydra.sweeper.study_name=test", f"data.root={phantom_root}", *TINY, "+trainer.limit_val_batches=1", "logger=csv",
                   f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"])
    assert "Best value" in proc.stdout + proc.stderr
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"model.optimizer.lr", "model.net.base_filters", "model.loss.bce_weight"}
    finals = {}
    for trial in (0, 1):
        job = sweep / str(trial)
        params = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert 1e-4 <= float(params["model.optimizer.lr"]) <= 1e-2 and 0 <= float(params["model.loss.bce_weight"]) <= 2
        config = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")[CONFIG_KEY]
        assert config["model"]["net"]["base_filters"] == int(params["model.net.base_filters"]) in (8, 16, 32)
        assert config["model"]["loss"]["bce_weight"] == pytest.approx(float(params["model.loss.bce_weight"]))
        finals[trial] = _final_csv_dice(job)["val/dice_mean"]
    assert results["best_value"] == pytest.approx(max(finals.values()))  # maximised, and what main() returned
    study = optuna.load_study(study_name="test", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(finals.values()))


def test_slurm_multinode_launcher_composes_into_an_sbatch_script(tmp_path, monkeypatch):
    _require("hydra_plugins.hydra_submitit_launcher.submitit_launcher", "slurm")
    import hydra
    import submitit

    cfg = compose_config(["hydra/launcher=slurm_multinode", "++trainer.num_nodes=2", "trainer.devices=4",
                          "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher_cfg.nodes, launcher_cfg.tasks_per_node, launcher_cfg.gpus_per_node) == (2, 4, 4)
    assert (launcher_cfg.partition, launcher_cfg.timeout_min, launcher_cfg.max_num_timeout) == ("gpu", 1440, 0)
    # launch through the real plugin up to submission: submitit needs an srun on PATH (a stand-in that is
    # never run) and the array submission is captured instead of calling sbatch
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    submitted = {}

    class _Job:
        def results(self):
            return ["done"]

    def fake_map_array(executor, fn, *iterables):
        submitted.update(executor=executor, overrides=list(iterables[0]))
        return [_Job() for _ in iterables[0]]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    launcher = hydra.utils.instantiate(launcher_cfg)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    assert launcher.launch([["data.fold=0"], ["data.fold=1"]], initial_job_idx=0) == ["done", "done"]
    assert submitted["overrides"] == [["data.fold=0"], ["data.fold=1"]]
    script = submitted["executor"]._executor._make_submission_file_text("python -u -m submitit.core._submit X", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8", "--mem=128GB",
                 "--time=1440", "--partition=gpu", "--signal=USR1@120"):  # USR1: Lightning's requeue signal
        assert f"#SBATCH {line}\n" in script
    assert script.count("--signal") == 1 and f"{tmp_path / 'sweep'}/.submitit/" in script
    assert submitted["executor"]._executor.max_num_timeout == 0
    # trainer.devices=auto cannot size a SLURM job: the error names the key and the fix
    auto = compose_config(["hydra/launcher=slurm_multinode", "trainer.devices=auto"], tmp_path)
    with pytest.raises(Exception, match=r"sizes the SLURM job from trainer.devices, which is 'auto': pass a number, "
                                        r"e.g. trainer.devices=4"):
        hydra.utils.instantiate(auto.hydra.launcher)
