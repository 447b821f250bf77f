"""Every Lightning callback of a training run, registered in ``conf/callbacks/default.yaml``.

Enters: the trainer's hooks. Leaves: logs, files in the run folder, a stopped or checkpointed run.

- the budget (:mod:`.budget`: ends a run on its step/time budget, validating once more) and the
  curves (:mod:`.curves`);
- validation pictures for every logger that holds images (:mod:`.pictures`), lesion-wise validation
  (:mod:`.lesionwise_validation`), the step timer (:mod:`.step_timer`);
- the run's model card (:mod:`.model_card`; :mod:`.publish` says what each kind of logger can hold);
- fault tolerance: atomic checkpoints (:mod:`.checkpoint_io`) and a checkpoint on SIGTERM
  (:mod:`.preemption`).

This was the package ``lightning_brats.callbacks`` (which still forwards here, with a warning).
"""

from lightning_brats.training.callbacks.checkpoint_io import AtomicCheckpoints
from lightning_brats.training.callbacks.preemption import SigtermCheckpoint

__all__ = ["AtomicCheckpoints", "SigtermCheckpoint"]
