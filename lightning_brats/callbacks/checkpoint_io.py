"""Install :class:`~lightning_brats.checkpoints.AtomicCheckpointIO` as the trainer's checkpoint writer."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_brats.checkpoints import AtomicCheckpointIO

log = logging.getLogger(__name__)


class AtomicCheckpoints(pl.Callback):
    """Make every checkpoint the trainer writes atomic and every one it reads validated.

    At ``setup`` (before Lightning restores ``ckpt_path`` and before any checkpoint is written)
    the strategy's default ``TorchCheckpointIO`` is replaced by
    :class:`~lightning_brats.checkpoints.AtomicCheckpointIO`: ``ModelCheckpoint``, the SIGTERM
    checkpoint and SLURM's ``hpc_ckpt_<n>.ckpt`` are then written to a temporary file beside the
    final name and renamed, and a corrupt or foreign ``ckpt_path`` stops with one message naming
    the file. A checkpoint IO plugin configured by the user (``trainer.plugins``) is left alone.
    A callback rather than ``trainer.plugins`` so that it composes with every ``trainer=`` preset.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        current = trainer.strategy.checkpoint_io
        if type(current) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(current, AtomicCheckpointIO):
            log.warning(f"Keeping the configured checkpoint IO {type(current).__name__}: checkpoints are not written atomically")
