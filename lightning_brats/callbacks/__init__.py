"""Lightning callbacks of lightning-brats: fault tolerance (atomic checkpoints, SIGTERM)."""

from lightning_brats.callbacks.checkpoint_io import AtomicCheckpoints
from lightning_brats.callbacks.preemption import SigtermCheckpoint

__all__ = ["AtomicCheckpoints", "SigtermCheckpoint"]
