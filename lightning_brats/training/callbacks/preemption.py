"""SIGTERM outside SLURM (Kubernetes, a plain ``kill``, a cloud spot instance): checkpoint, then exit 143.

Lightning 2.6 (``pytorch_lightning/trainer/connectors/signal_connector.py``) catches SIGTERM,
sets ``trainer.received_sigterm`` and, once the running step has ended, the loops raise
``SIGTERMException``, a ``SystemExit`` without a code: no checkpoint is written and the
process exits with status 0, so a scheduler records success. :class:`SigtermCheckpoint` writes
the training state when that exception passes through ``on_exception`` and gives it the
status of a process ended by SIGTERM (128 + 15 = 143). Under SLURM with auto-requeue Lightning's
own path (``hpc_ckpt_<n>.ckpt`` on the requeue signal, then ``scontrol requeue``) is left as it is.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

#: Exit status of a process ended by SIGTERM, as a shell reports it (128 + signal number).
SIGTERM_EXIT_STATUS = 128 + int(signal.SIGTERM)


class SigtermCheckpoint(pl.Callback):
    """On SIGTERM, save the full training state to ``<dirpath>/<filename>.ckpt`` and exit with status 143.

    The checkpoint is the state after the last finished step (mid-epoch): weights, optimiser,
    LR scheduler, loops, callbacks and the datamodule's sampler; ``ckpt_path=last`` (which
    looks for ``runs/*/checkpoints/last.ckpt``) resumes from it and the global step continues.
    Written through the strategy's checkpoint IO, i.e. atomically with
    :class:`~lightning_brats.training.callbacks.AtomicCheckpoints`. A mid-epoch resume redraws that epoch's
    samples from its start (the loader is not resumable mid-epoch; Lightning warns), so it is not
    bit-exact as an end-of-epoch resume is.

    Args:
        dirpath: folder of the checkpoint (the run's ``checkpoints/``).
        filename: file name without ``.ckpt``; ``last`` replaces the end-of-epoch ``last.ckpt``
            by this newer state.

    Raises:
        ValueError: an empty ``filename``.
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        if not filename:
            raise ValueError("SigtermCheckpoint: filename must not be empty")
        self.dirpath = str(dirpath)
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        """Where the checkpoint is written."""
        return str(Path(self.dirpath) / f"{self.filename}.ckpt")

    @staticmethod
    def slurm_requeues(trainer: pl.Trainer) -> bool:
        """Whether Lightning's SLURM auto-requeue handles signals in this run (then this callback does nothing)."""
        environment = trainer._accelerator_connector.cluster_environment
        return isinstance(environment, SLURMEnvironment) and environment.auto_requeue

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or self.slurm_requeues(trainer):
            return
        exception.code = SIGTERM_EXIT_STATUS
        if trainer.state.fn != TrainerFn.FITTING:  # validate/test/predict: no training state to keep
            return
        trainer.save_checkpoint(self.ckpt_path)
        if trainer.is_global_zero:
            log.warning(
                f"SIGTERM: saved {self.ckpt_path} (epoch {trainer.current_epoch}, global step {trainer.global_step}); "
                f"exiting with status {SIGTERM_EXIT_STATUS}. Resume with ckpt_path=last or ckpt_path={self.ckpt_path}"
            )
