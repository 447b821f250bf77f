"""``curves.png`` in every run folder: losses and validation Dice per region against epochs.

An offline user (no W&B sync) can look at a run without opening a notebook.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from lightning_brats.io import atomic_save


class TrainingCurves(pl.Callback):
    """Record epoch-level metrics during ``fit`` and draw them into ``<dirpath>/curves.png`` at its end.

    Records ``train/loss_epoch`` after each training epoch and ``val/loss`` and every
    ``val/dice_*`` after each validation (sanity checks excluded). Written by global rank 0 only,
    atomically, also when training stops early (``max_time``, interruption), and attached to every
    logger that holds files (:func:`~lightning_brats.training.callbacks.publish.log_file`). The history travels
    in checkpoints (callback state), so a resumed run draws every epoch, not only its own.

    Args:
        dirpath: the run folder.
        filename: the picture's name.
    """

    def __init__(self, dirpath: str, filename: str = "curves.png") -> None:
        self.path = Path(dirpath) / filename
        self.history: dict[str, list[tuple[int, float]]] = {}

    def _record(self, trainer: pl.Trainer, keys) -> None:
        for key in keys:
            value = trainer.callback_metrics.get(key)
            if value is not None:
                self.history.setdefault(key, []).append((trainer.current_epoch, float(value)))

    def state_dict(self) -> dict:
        return {"history": {key: [list(point) for point in points] for key, points in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {key: [(int(e), float(v)) for e, v in points] for key, points in state_dict["history"].items()}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, ["train/loss_epoch"])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, [k for k in trainer.callback_metrics if k == "val/loss" or k.startswith("val/dice_")])

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.history:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(self.path, self.draw)
            # every logger that holds files or images gets it too (W&B files, MLflow artifacts, TensorBoard)
            from lightning_brats.training.callbacks.publish import log_file

            log_file(trainer.loggers, self.path, step=trainer.global_step)

    def draw(self, path: Path) -> None:
        """Two panels: losses (left), validation Dice per region (right), against epochs; PNG at ``path``."""
        from matplotlib.ticker import MaxNLocator

        from lightning_brats.evaluation.visualize import _pyplot

        plt = _pyplot()

        fig, (losses, dice) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
        for key, points in sorted(self.history.items()):
            axis = dice if key.startswith("val/dice_") else losses
            epochs, values = zip(*points)
            axis.plot(epochs, values, marker="o", markersize=3, label=key)
        losses.set(title="loss", xlabel="epoch")
        dice.set(title="validation Dice", xlabel="epoch", ylim=(0, 1))
        for axis in (losses, dice):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            if axis.has_data():
                axis.legend()
            axis.grid(alpha=0.3)
        fig.tight_layout()
        with open(path, "wb") as handle:
            fig.savefig(handle, format="png")
        plt.close(fig)
