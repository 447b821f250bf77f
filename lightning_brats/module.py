"""The LightningModule: the training step, the optimiser, whole-case validation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import nn

from lightning_brats.inference import predict_logits
from lightning_brats.metrics import RegionDice
from lightning_brats.visualize import REGION_COLOUR_NAMES, comparison_picture

log = logging.getLogger(__name__)

#: Key under which a checkpoint carries the run's resolved ``data`` and ``model`` config.
CONFIG_KEY = "lightning_brats_config"


class SegmentationModule(pl.LightningModule):
    """Region segmentation (one sigmoid output per region, e.g. WT, TC, ET).

    The datamodule supplies the regions, patch size, sampling mode and modalities at
    ``setup``; the network's dimensionality and patch divisibility are checked then,
    before any training step.

    Args:
        net: maps ``(B, C, *patch)`` to ``(B, R, *patch)`` logits.
        loss: maps ``(logits, target)`` to a scalar (e.g. :class:`~lightning_brats.losses.DiceBCELoss`).
        optimizer: partial ``torch.optim`` optimiser, called with the parameters.
        scheduler: partial LR scheduler, called with the optimiser, stepped per epoch; or ``None``.
        sliding_window_overlap: overlap of validation windows (fraction).
        sw_batch_size: windows (3D) or slices (2D) per validation forward pass.
        num_val_images: cases per validation pictured in W&B.
        display_modality: modality shown under the overlays.
        threshold: probability above which a voxel belongs to a region.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        sliding_window_overlap: float = 0.5,
        sw_batch_size: int = 2,
        num_val_images: int = 2,
        display_modality: str = "flair",
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        # Only plain values go into the checkpoint's hyper-parameters, so it loads with
        # torch.load(weights_only=True); the full resolved config travels under CONFIG_KEY.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net = net
        self.loss = loss
        self.region_names: list[str] = []
        self.patch_size: list[int] = []
        self.display_channel = 0
        self.val_dice: RegionDice | None = None
        self.run_config: dict | None = None

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.configure_for(dm.region_names, dm.patch_size, dm.modalities)

    def configure_for(self, region_names, patch_size, modalities) -> None:
        """Bind the data's regions, patch size and modalities; check the network accepts them.

        Raises:
            ValueError: the patch does not suit the network (dimensionality or divisibility).
        """
        check = getattr(self.net, "check_patch_size", None)
        if check is not None:
            check(patch_size)
        self.region_names = list(region_names)
        self.patch_size = list(patch_size)
        self.display_channel = modalities.index(self.hparams.display_modality) if self.hparams.display_modality in modalities else 0
        if self.val_dice is None:
            self.val_dice = RegionDice(len(self.region_names)).to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.net(batch["image"])
        loss = self.loss(logits, batch["target"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: Mapping, batch_idx: int) -> None:
        image, target = batch["image"], batch["target"]
        logits = predict_logits(self.net, image, self.patch_size, self.hparams.sliding_window_overlap, self.hparams.sw_batch_size)
        self.log("val/loss", self.loss(logits, target), on_epoch=True, batch_size=1)
        pred = torch.sigmoid(logits) > self.hparams.threshold
        self.val_dice.update(pred, target)
        if batch_idx < self.hparams.num_val_images:
            self._log_picture(batch, pred)

    def on_validation_epoch_end(self) -> None:
        dice = self.val_dice.compute().reshape(-1)  # torchmetrics squeezes a single region to 0-d
        for name, value in zip(self.region_names, dice):
            self.log(f"val/dice_{name}", value.float())
        self.log("val/dice_mean", dice.mean().float(), prog_bar=True)
        self.val_dice.reset()

    def _log_picture(self, batch: Mapping, pred: torch.Tensor) -> None:
        wandb_loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers or self.trainer.sanity_checking:
            return
        picture = comparison_picture(
            batch["image"][0].cpu().numpy(), batch["target"][0].cpu().numpy(), pred[0].cpu().numpy(), self.display_channel
        )
        colours = ", ".join(f"{name.upper()} {colour}" for name, colour in zip(self.region_names, REGION_COLOUR_NAMES))
        caption = f"{batch['case_id'][0]} epoch {self.current_epoch}: ground truth | prediction ({colours})"
        for lg in wandb_loggers:
            lg.log_image(key=f"val/overlay_{batch['case_id'][0]}", images=[picture], caption=[caption], step=self.global_step)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.run_config = checkpoint.get(CONFIG_KEY)

