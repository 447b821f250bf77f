"""Lightning callbacks registered in ``conf/callbacks/default.yaml``: validation pictures for every
logger that holds images (:mod:`.pictures`), the run's model card (:mod:`.model_card`; :mod:`.publish`
says what each kind of logger can hold), and fault tolerance: atomic checkpoints (:mod:`.checkpoint_io`)
and a checkpoint on SIGTERM (:mod:`.preemption`)."""

from lightning_brats.callbacks.checkpoint_io import AtomicCheckpoints
from lightning_brats.callbacks.preemption import SigtermCheckpoint

__all__ = ["AtomicCheckpoints", "SigtermCheckpoint"]
