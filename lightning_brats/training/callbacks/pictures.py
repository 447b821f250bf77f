"""Validation pictures for every logger that holds images (W&B, TensorBoard, MLflow)."""

from __future__ import annotations

from collections.abc import Mapping

import pytorch_lightning as pl
import torch

from lightning_brats.data.labels import nested_region_codes, regions_to_labels
from lightning_brats.evaluation.metrics import region_dice
from lightning_brats.evaluation.visualize import case_figure, figure_to_array
from lightning_brats.training.callbacks.publish import log_picture


class ValidationPictures(pl.Callback):
    """Picture the first validation cases of every validation (sanity check excluded) with
    :func:`~lightning_brats.evaluation.visualize.case_figure` and send it to each logger that holds images
    (:func:`~lightning_brats.training.callbacks.publish.log_picture`), under ``val/case_<case id>``.

    The module's ``validation_step`` returns ``{"pred": (B, R, *spatial) bool}``, its thresholded
    prediction of the batch, so the picture costs no extra inference. The number of cases and the
    modality shown come from the module (``model.num_val_images``, ``model.display_modality`` = ``display.modality``),
    as they did when the module drew the pictures itself. Under DDP only global rank 0 draws, from
    its own share of the cases. Nothing is drawn when no logger holds images (CSV only,
    ``fast_dev_run``).

    Args:
        num_images: cases per validation; ``None``: the module's ``num_val_images``.
    """

    def __init__(self, num_images: int | None = None) -> None:
        self.num_images = num_images

    def _wanted(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int) -> bool:
        limit = self.num_images if self.num_images is not None else pl_module.hparams.get("num_val_images", 0)
        if batch_idx >= limit or trainer.sanity_checking or not trainer.is_global_zero:
            return False
        from lightning_brats.training.callbacks.publish import _kind

        return any(_kind(lg) != "other" for lg in trainer.loggers)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch: Mapping, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._wanted(trainer, pl_module, batch_idx):
            return
        if not isinstance(outputs, Mapping) or "pred" not in outputs:
            raise ValueError(
                f"ValidationPictures needs validation_step to return {{'pred': thresholded prediction}}; "
                f"{type(pl_module).__name__}.validation_step returned {type(outputs).__name__}"
            )
        picture, caption = self.draw(pl_module, batch, outputs["pred"], trainer.datamodule)
        case_id = batch["case_id"][0]
        log_picture(trainer.loggers, f"val/case_{case_id}", picture, trainer.global_step, caption)

    @staticmethod
    def draw(pl_module: pl.LightningModule, batch: Mapping, pred: torch.Tensor, datamodule) -> tuple:
        """The picture of the batch's first case: ``((H, W, 3) uint8, caption)``.

        Args:
            pred: ``(B, R, *spatial)`` bool, the thresholded prediction of ``batch["image"]``.
        """
        truth = regions_to_labels(batch["target"][0].cpu().numpy(), datamodule.regions)
        labels = regions_to_labels(pred[0].cpu().numpy(), datamodule.regions)
        dice = region_dice(pred[:1], batch["target"][:1].bool())[0]
        scores = ", ".join(f"{n.upper()} {d:.2f}" for n, d in zip(pl_module.region_names, dice.tolist()))
        case_id = batch["case_id"][0]
        channel = pl_module.display_channel
        shown = pl_module.modalities[channel] if pl_module.modalities else ""
        figure = case_figure(
            batch["image"][0, channel].float().cpu().numpy(), truth, labels, datamodule.labels,
            [code for _, code in nested_region_codes(datamodule.regions)],
            f"{case_id} epoch {pl_module.current_epoch}: Dice {scores}", shown,
        )
        return figure_to_array(figure), f"{case_id} epoch {pl_module.current_epoch}: {scores}"
