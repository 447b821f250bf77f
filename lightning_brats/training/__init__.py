"""Stage 2, training: samples in -> a trained network (checkpoints, logs, model card) out.

Enters: the batches of :mod:`lightning_brats.data` (the datamodule), a network of
:mod:`lightning_brats.models`, and the ``model``/``trainer``/``callbacks`` configs. Leaves:
checkpoints that carry their resolved config (read back by :mod:`.checkpoints`), metric logs and the
run's model card.

- :mod:`.module`: the LightningModule (loss, optimiser, validation with the sliding window of
  :mod:`lightning_brats.inference.sliding_window`);
- :mod:`.losses`, :mod:`.schedules` (the LR schedule over the step/time budget);
- :mod:`.callbacks`: every Lightning callback (budget, curves, pictures, model card, step timer,
  atomic checkpoints, preemption, lesion-wise validation);
- :mod:`.checkpoints` (safe loading, atomic writing), :mod:`.hardware` (precision, threads, CUDA),
  :mod:`.allocator` (tcmalloc), :mod:`.nonfinite` (non-finite losses);
- :mod:`.resume` (``ckpt_path=`` and ``ckpt_path=last``, the W&B run a resumed run continues, a run
  must leave a checkpoint), :mod:`.distributed` (rank-zero logging, no re-running DDP launcher in a
  Hydra multirun): what ``train.py`` calls around ``trainer.fit``.

Nothing is imported here, so importing one module (e.g. the checkpoint reader) stays light.
"""
