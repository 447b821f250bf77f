"""Install :class:`~lightning_brats.training.checkpoints.AtomicCheckpointIO` as the trainer's checkpoint writer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_brats.io import remove_stale_temporaries
from lightning_brats.training.checkpoints import AtomicCheckpointIO

log = logging.getLogger(__name__)


class AtomicCheckpoints(pl.Callback):
    """Make every checkpoint the trainer writes atomic and every one it reads validated.

    At ``setup`` (before Lightning restores ``ckpt_path`` and before any checkpoint is written)
    the strategy's default ``TorchCheckpointIO`` is replaced by
    :class:`~lightning_brats.training.checkpoints.AtomicCheckpointIO`: ``ModelCheckpoint``, the SIGTERM
    checkpoint and SLURM's ``hpc_ckpt_<n>.ckpt`` are then written to a temporary file beside the
    final name and renamed, and a corrupt or foreign ``ckpt_path`` stops with one message naming
    the file. A checkpoint IO plugin configured by the user (``trainer.plugins``) is left alone.
    A callback rather than ``trainer.plugins`` so that it composes with every ``trainer=`` preset.
    Also removes, on rank 0, the temporary files (``.last.ckpt.tmp-<pid>``) that killed processes
    left in this run's checkpoint folder and in the folder of the checkpoint it resumes from
    (:func:`~lightning_brats.data.preprocess.remove_stale_temporaries`).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        current = trainer.strategy.checkpoint_io
        if type(current) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(current, AtomicCheckpointIO):
            log.warning(f"Keeping the configured checkpoint IO {type(current).__name__}: checkpoints are not written atomically")
        if trainer.is_global_zero:
            for folder in self._checkpoint_folders(trainer):
                remove_stale_temporaries(folder, log.warning)

    @staticmethod
    def _checkpoint_folders(trainer: pl.Trainer) -> list[Path]:
        """Local folders checkpoints of this run are written to or resumed from."""
        folders = [getattr(callback, "dirpath", None) for callback in trainer.checkpoint_callbacks]
        folders.append(str(Path(trainer.ckpt_path).parent) if trainer.ckpt_path else None)
        return sorted({Path(f) for f in folders if f and "://" not in str(f)})
