"""``python train.py`` / ``lightning-brats-train``: compose the config, build everything, fit.

Follows lightning-hydra-template's ``src/train.py``: every object is built with
``hydra.utils.instantiate`` from its ``_target_``; ``main`` returns the value of
``optimized_metric`` so Hydra sweepers can optimise it.

Multi-process training (``trainer=ddp``, ``trainer=ddp_cpu``) is Lightning's DDP: with its
default launcher Lightning re-runs this command for ranks 1.. with ``hydra.run.dir`` set to
rank 0's run folder, so a run has one folder. Resuming (``ckpt_path=...``) is Lightning's
checkpoint restore; see :func:`resolve_ckpt_path` for ``ckpt_path=last``.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import lightning_brats  # noqa: F401  (registers the ${len:...} resolver)
from lightning_brats.cli.errors import reports_bad_input
from lightning_brats.training.allocator import describe_allocator
from lightning_brats.training.checkpoints import WANDB_ID_KEY
from lightning_brats.training.hardware import (
    configure_cuda,
    configure_threads,
    out_of_memory,
    resolve_precision,
)

log = logging.getLogger("lightning_brats.train")

# The configs: the checkout's conf/ or the installed package's (see lightning_brats/configs.py).
from lightning_brats.configs import CONFIG_DIR, CONFIG_PATH  # noqa: F401  (CONFIG_DIR: for tests and tools)
from lightning_brats.data.data_config import accept_flat_data_keys


def _instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a config group that holds named objects (callbacks, loggers)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


#: Where ``ckpt_path=last`` looks, below ``paths.log_dir``: the last checkpoints of this task's single runs.
LAST_CHECKPOINTS = "{task_name}/runs/*/checkpoints/last.ckpt"


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from, from ``cfg.ckpt_path``.

    - unset, ``null`` or empty: none (train from the start). Under SLURM, Lightning itself then
      resumes from the ``hpc_ckpt_<n>.ckpt`` it saved in ``trainer.default_root_dir`` (the run
      folder) before a requeue.
    - ``last``: the newest (by modification time) of ``<paths.log_dir>/<task_name>/runs/*/checkpoints/last.ckpt``,
      i.e. the last epoch of this task's most recent single run. Lightning's own ``"last"`` looks
      in this run's checkpoint folder, which Hydra has just created empty, and then only warns
      and starts from scratch; here finding nothing is an error.
    - ``hpc``: passed to Lightning (the newest ``hpc_ckpt_<n>.ckpt`` in ``trainer.default_root_dir``).
    - anything else: a checkpoint file.

    Every DDP process resolves ``last`` alike: the first checkpoint of this run is written only
    after all processes have joined, which they do after resolving.

    Raises:
        FileNotFoundError: ``ckpt_path=last`` finds no checkpoint (the message names the pattern
            searched), or the named checkpoint file does not exist.
        lightning_brats.training.checkpoints.CheckpointError: the checkpoint is corrupt or foreign (see
            :func:`check_checkpoint`).
    """
    value = cfg.get("ckpt_path")
    if value is None or str(value).strip() == "":
        return None
    value = str(value)
    if value == "hpc":
        return value
    if value == "last":
        pattern = str(Path(cfg.paths.log_dir) / LAST_CHECKPOINTS.format(task_name=cfg.task_name))
        found = [p for p in Path(cfg.paths.log_dir).glob(LAST_CHECKPOINTS.format(task_name=cfg.task_name)) if p.is_file()]
        if not found:
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoint matches {pattern}; train without ckpt_path first, or pass "
                "ckpt_path=/path/to/checkpoint.ckpt (check task_name and paths.log_dir / LIGHTNING_BRATS_ROOT)"
            )
        return check_checkpoint(str(max(found, key=lambda p: p.stat().st_mtime).resolve()))
    from lightning_fabric.utilities.cloud_io import get_filesystem

    if not get_filesystem(value).exists(value):
        raise FileNotFoundError(f"ckpt_path={value}: no such checkpoint file; pass an existing .ckpt or ckpt_path=last")
    return check_checkpoint(value)


def check_checkpoint(path: str) -> str:
    """``path`` once :func:`~lightning_brats.training.checkpoints.load_checkpoint` has read it (memory-mapped,
    ``weights_only=True``), so that a corrupt or foreign checkpoint stops the run before anything is built.
    Files on remote file systems are checked when Lightning restores them (see
    :class:`~lightning_brats.training.callbacks.AtomicCheckpoints`), not downloaded twice.

    Raises:
        lightning_brats.training.checkpoints.CheckpointError: the file is empty, truncated, not a PyTorch
            file, a plain state dict or another project's checkpoint; the message names it.
    """
    from lightning_brats.training.checkpoints import load_checkpoint

    if Path(path).is_file():
        load_checkpoint(path, mmap=True)
    return path


def _lightning_hpc_checkpoint(cfg: DictConfig, ckpt_path: str | None) -> str | None:
    """The ``hpc_ckpt_<n>.ckpt`` Lightning resumes from: with ``ckpt_path="hpc"``, or by itself
    under SLURM when ``ckpt_path`` is ``None`` (the newest in ``trainer.default_root_dir``)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    root = cfg.trainer.get("default_root_dir")
    if not root or (ckpt_path != "hpc" and not SLURMEnvironment.detect()):
        return None
    found = {int(m.group(1)): p for p in Path(root).glob("hpc_ckpt_*.ckpt") if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))}
    return str(found[max(found)]) if found else None


def read_wandb_run_id(ckpt_path: str) -> str | None:
    """The W&B run id stored in a checkpoint by :class:`~lightning_brats.training.module.SegmentationModule`, or ``None``.

    Raises:
        lightning_brats.training.checkpoints.CheckpointError: a corrupt or foreign checkpoint.
    """
    from lightning_brats.training.checkpoints import load_checkpoint, wandb_run_id

    return wandb_run_id(load_checkpoint(ckpt_path, mmap=True))  # memory-mapped: the weights are not read


def continue_wandb_run(cfg: DictConfig, ckpt_path: str | None) -> str | None:
    """Make the configured ``WandbLogger`` continue the W&B run of the checkpoint being resumed.

    Sets ``id`` and ``resume="allow"`` on every ``logger.*`` entry whose ``_target_`` is a
    ``WandbLogger`` and that has no ``id`` of its own. ``ckpt_path`` ``None`` under SLURM looks
    at Lightning's requeue checkpoint (see :func:`resolve_ckpt_path`).

    Returns:
        the run id used, or ``None`` (no W&B logger, nothing resumed, or no id in the checkpoint).
    """
    wandb_cfgs = [
        c for c in (cfg.get("logger") or {}).values()
        if isinstance(c, DictConfig) and str(c.get("_target_", "")).endswith("WandbLogger") and not c.get("id")
    ]
    source = ckpt_path if ckpt_path not in (None, "hpc") else _lightning_hpc_checkpoint(cfg, ckpt_path)
    if not wandb_cfgs or source is None:
        return None
    run_id = read_wandb_run_id(source)
    if run_id is None:
        _log_rank_zero(logging.WARNING, f"{source} holds no W&B run id ({WANDB_ID_KEY}): the resumed run starts a new W&B run")
        return None
    for wandb_cfg in wandb_cfgs:
        with open_dict(wandb_cfg):
            wandb_cfg.id = run_id
            wandb_cfg.resume = "allow"
    _log_rank_zero(logging.INFO, f"Continuing W&B run {run_id}")
    return run_id


def _log_rank_zero(level: int, message: str) -> None:
    """Log once per run, not once per DDP process (the rank comes from the launcher's environment)."""
    from pytorch_lightning.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        log.log(level, message)


def check_no_relaunch_in_multirun(trainer: pl.Trainer) -> None:
    """Refuse Lightning's re-running DDP launcher inside a Hydra multirun (``-m``).

    That launcher starts ranks 1.. by re-running this process's command line, which in a
    multirun is the whole sweep: every extra process would run the sweep again (duplicate sweep
    folders, and with a sampling sweeper such as Optuna other hyperparameters than rank 0's).
    Processes started by SLURM (srun, e.g. Hydra's submitit launcher) or spawned are fine.

    Raises:
        ValueError: a multirun job would re-run the command line for more than one process.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not launcher.cluster_environment.creates_processes_externally
        and HydraConfig.initialized()
        and HydraConfig.get().mode == RunMode.MULTIRUN
    ):
        raise ValueError(
            f"trainer.devices={launcher.num_processes} in a Hydra multirun (-m): Lightning's DDP launcher re-runs the "
            "command line for each extra process, which would re-run the whole sweep there. Run the sweep on SLURM "
            "(hydra/launcher=submitit_slurm with tasks_per_node = trainer.devices: srun starts the processes), or "
            "run each setting as its own single run"
        )


def choose_precision_and_threads(cfg: DictConfig) -> None:
    """Resolve ``trainer.precision=auto`` for this machine and size PyTorch's CPU thread pool.

    Writes the resolved precision back into ``cfg.trainer.precision`` (so the logged config and the
    checkpoint say what ran) and logs the decision with its reason; see
    :func:`~lightning_brats.training.hardware.resolve_precision` and :func:`~lightning_brats.training.hardware.configure_threads`.
    """
    precision, reason = resolve_precision(cfg.trainer.get("precision", "auto"), cfg.trainer.get("accelerator", "auto"))
    with open_dict(cfg):
        cfg.trainer.precision = precision
    _log_rank_zero(logging.INFO, f"Precision {precision}: {reason}")
    cuda = configure_cuda(cfg.trainer.get("accelerator", "auto"))
    if cuda:
        _log_rank_zero(logging.INFO, cuda)
    configure_threads(int(cfg.data.get("num_workers") or 0), deterministic=bool(cfg.trainer.get("deterministic")))


def check_checkpoint_written(trainer: pl.Trainer) -> None:
    """Fail a run that trained but left no checkpoint (a scheduler must not record it as a success).

    Raises:
        RuntimeError: no checkpoint callback saved anything (e.g. the run was stopped before its
            first epoch ended); the message says how many steps ran.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    if trainer.fast_dev_run or not trainer.is_global_zero:
        return
    checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    if checkpoints and not any(cb.best_model_path or cb.last_model_path for cb in checkpoints):
        raise RuntimeError(
            f"training stopped after {trainer.global_step} steps without writing any checkpoint "
            f"(dirpath {checkpoints[0].dirpath}); nothing of this run can be resumed or used"
        )


def train(cfg: DictConfig) -> dict[str, float]:
    """:func:`run_training`'s final metrics as floats (``val/dice_wt``, ``val/dice_mean``, ...)."""
    return run_training(cfg).metrics


def run_training(cfg: DictConfig):
    """Train (and validate the best checkpoint) as ``cfg`` says.

    ``cfg.ckpt_path`` resumes a run exactly (see :func:`resolve_ckpt_path`): Lightning restores
    the weights, optimiser, LR scheduler, epoch, global step, callbacks and the datamodule's
    sampler state; the W&B logger continues the checkpoint's W&B run (:func:`continue_wandb_run`).
    The resumed run writes into its own new run folder.

    Returns:
        a :class:`~lightning_brats.api.TrainResult`: the run folder, the best checkpoint, the final
        callback metrics as floats (``val/dice_wt``, ``val/dice_mean``, ...), the module and the datamodule.

    Raises:
        lightning_brats.data.readers.DataError: ``data.root`` is missing or holds no cases
            (raised before any training).
        FileNotFoundError: ``ckpt_path`` names no checkpoint (see :func:`resolve_ckpt_path`).
        ValueError: DDP that re-runs the command line inside a Hydra multirun
            (see :func:`check_no_relaunch_in_multirun`).
        RuntimeError: training ended without writing a checkpoint (see :func:`check_checkpoint_written`).
    """
    pl.seed_everything(cfg.seed, workers=True)
    choose_precision_and_threads(cfg)
    _log_rank_zero(logging.INFO, describe_allocator())  # tcmalloc/jemalloc preloaded, or the LD_PRELOAD to use
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path:
        _log_rank_zero(logging.INFO, f"Resuming from {ckpt_path}")
    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check_root()  # fail before building anything heavy when the data root is wrong
    resolved = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }
    log.info(f"Instantiating model <{cfg.model._target_}>")
    # the data settings come by interpolation (conf/model/unet3d.yaml); the resolved config travels in its checkpoints
    model = hydra.utils.instantiate(cfg.model, run_config={"data": resolved["data"], "model": resolved["model"]})
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    continue_wandb_run(cfg, ckpt_path)
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    check_no_relaunch_in_multirun(trainer)
    for lg in trainer.loggers:
        lg.log_hyperparams(resolved)
    try:
        try:
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
        except torch.OutOfMemoryError as exc:
            raise out_of_memory(
                "training",
                {"data.patch_size": list(cfg.data.patch_size), "data.batch_size": cfg.data.batch_size,
                 "trainer.precision": cfg.trainer.precision, "inference.sw_batch_size (validation)": cfg.inference.sw_batch_size},
                "data.batch_size, data.patch_size or inference.sw_batch_size, or train in bf16-mixed/16-mixed",
                trainer.strategy.root_device,
            ) from exc
        if trainer.is_global_zero and datamodule.splits_path.exists():
            shutil.copy(datamodule.splits_path, Path(cfg.paths.output_dir) / "splits.json")
        check_checkpoint_written(trainer)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if cfg.get("validate_best") and best:
            log.info(f"Validating the best checkpoint {best}")
            results = trainer.validate(model=model, datamodule=datamodule, ckpt_path=best, verbose=False)
            metrics.update({k: float(v) for k, v in results[0].items()})
            metrics["best_model_path"] = best
    finally:
        _finish_wandb(trainer)
    if trainer.is_global_zero:
        log.info("Final metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        log.info(f"Run folder: {cfg.paths.output_dir}")
    from lightning_brats.api import TrainResult

    return TrainResult(Path(cfg.paths.output_dir), Path(best) if best else None, metrics, model, datamodule)


def _finish_wandb(trainer: pl.Trainer) -> None:
    """Close the W&B run so a multirun's next job starts a new one (as lightning-hydra-template)."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


@accept_flat_data_keys  # data.spacing=... for data.preprocessing.spacing=... (lightning_brats.data.data_config)
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@reports_bad_input
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    from lightning_brats import api

    metrics = api.train(cfg).metrics  # the Python API's code path: Hydra has set up the run folder
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
    return metrics[name]


if __name__ == "__main__":
    main()
