"""Training in several processes (DDP): what each process logs, and which launches are refused.

Lightning's DDP runs one process per device; with its default launcher it starts ranks 1.. by
re-running the command line (``_SubprocessScriptLauncher``). The rules here keep a run's log to
one copy of each line and keep that launcher out of Hydra multiruns.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytorch_lightning as pl


def log_rank_zero(logger: logging.Logger, level: int, message: str) -> None:
    """Log ``message`` at ``level`` on ``logger`` once per run, not once per DDP process.

    The rank comes from the launcher's environment (Lightning's ``rank_zero_only.rank``, set
    before the trainer exists), so this works before ``pl.Trainer`` is built. Returns nothing.
    """
    from pytorch_lightning.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        logger.log(level, message)


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
