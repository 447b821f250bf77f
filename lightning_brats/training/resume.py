"""Resuming a training run: which checkpoint ``ckpt_path=`` names, and the W&B run it continues.

``train.py ckpt_path=...`` is Lightning's checkpoint restore (weights, optimiser, LR scheduler,
epoch, global step, callbacks, the datamodule's sampler state); this module finds the file
(:func:`resolve_ckpt_path`, with ``ckpt_path=last`` searching this task's runs), checks it before
anything is built (:func:`check_checkpoint`), and points the configured ``WandbLogger`` at the W&B
run stored in it (:func:`continue_wandb_run`). Under SLURM, Lightning resumes from its own
``hpc_ckpt_<n>.ckpt`` after a requeue, and the W&B run is taken from that file. A run that trained
but left no checkpoint to resume from or predict with is a failure (:func:`check_checkpoint_written`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, open_dict

from lightning_brats.training.checkpoints import WANDB_ID_KEY
from lightning_brats.training.distributed import log_rank_zero

if TYPE_CHECKING:
    import pytorch_lightning as pl

log = logging.getLogger(__name__)

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

    Returns:
        the path to pass to ``trainer.fit(ckpt_path=...)`` (absolute for ``last``), ``"hpc"``, or ``None``.

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

    Returns:
        ``path`` unchanged.

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

    Raises:
        lightning_brats.training.checkpoints.CheckpointError: the checkpoint read for its id is corrupt or foreign.
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
        log_rank_zero(log, logging.WARNING, f"{source} holds no W&B run id ({WANDB_ID_KEY}): the resumed run starts a new W&B run")
        return None
    for wandb_cfg in wandb_cfgs:
        with open_dict(wandb_cfg):
            wandb_cfg.id = run_id
            wandb_cfg.resume = "allow"
    log_rank_zero(log, logging.INFO, f"Continuing W&B run {run_id}")
    return run_id


def check_checkpoint_written(trainer: pl.Trainer) -> None:
    """Fail a run that trained but left no checkpoint (a scheduler must not record it as a success).

    Returns nothing; does nothing for ``fast_dev_run`` and on processes other than global rank 0.

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
