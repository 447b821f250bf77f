"""The LightningModule: the training step, the optimiser, whole-case validation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from torch import nn
from torchmetrics import MeanMetric

from lightning_brats.budget import PolyLRByProgress, training_progress
from lightning_brats.data.datamodule import adopt_legacy_state
from lightning_brats.inference import InferenceSettings, predict_logits
from lightning_brats.losses import deep_supervision_loss
from lightning_brats.metrics import RegionDice

log = logging.getLogger(__name__)

#: Key under which a checkpoint carries the run's resolved ``data`` and ``model`` config.
CONFIG_KEY = "lightning_brats_config"

#: Key under which a checkpoint carries the W&B run id, so that a resumed run continues that W&B run.
WANDB_ID_KEY = "lightning_brats_wandb_run_id"

#: Key under which a checkpoint carries how many training batches were skipped for a non-finite loss.
SKIPPED_KEY = "lightning_brats_nonfinite_skipped"


class NonFiniteLossError(FloatingPointError):
    """The training loss was NaN or infinite; the message names the step, the epoch and the batch's cases."""


class SegmentationModule(pl.LightningModule):
    """Region segmentation (one sigmoid output per region, e.g. WT, TC, ET).

    The datamodule supplies the regions, patch size, sampling mode and modalities at
    ``setup``; the network's dimensionality and patch divisibility are checked then,
    before any training step. A network with deep supervision (a ``num_outputs`` attribute
    above 1) returns a list of logits in training; the loss is then MONAI's
    ``DeepSupervisionLoss`` with nnU-Net's weights, and validation uses the full-resolution
    output only (the network returns just that in eval mode).

    Args:
        net: maps ``(B, C, *patch)`` to ``(B, R, *patch)`` logits.
        loss: maps ``(logits, target)`` to a scalar (e.g. :class:`~lightning_brats.losses.DiceBCELoss`).
        optimizer: partial ``torch.optim`` optimiser, called with the parameters.
        scheduler: partial LR scheduler, called with the optimiser; or ``None``. Stepped at its
            ``interval`` attribute (``"step"`` for :class:`~lightning_brats.budget.PolyLRByProgress`,
            whose ``progress`` this module sets from :func:`~lightning_brats.budget.training_progress`
            after every optimiser step), else per epoch.
        inference: the ``inference`` config (``inference: ${inference}`` in ``conf/model/unet3d.yaml``)
            or an :class:`~lightning_brats.inference.InferenceSettings`: validation uses its
            ``overlap``, ``sw_batch_size`` and ``threshold``, as ``predict.py`` does (no flip TTA).
            Kept as :attr:`inference`.
        num_val_images: cases per validation pictured (the picture ``eval.py`` writes) by
            :class:`~lightning_brats.callbacks.pictures.ValidationPictures` in every logger that holds
            images; under DDP the first of global rank 0's share of the cases.
        display_modality: modality shown under the overlays, or a list of them: the first the
            data has (default T1ce, else FLAIR, else the first channel).
        name: the model's name in messages and logs (the ``model=`` config name).
        compile: run the network through ``torch.compile`` for training and validation
            (the checkpoint keeps the plain network's weights).
        skip_nonfinite: on a NaN or infinite training loss, skip the batch (no backward; the
            gradients stay ``None``, so the optimiser leaves every weight and its state as they
            were; Lightning still counts the step in ``global_step``) and count it
            (``train/nonfinite_skipped``, kept in checkpoints) instead of stopping with
            :class:`NonFiniteLossError`. A model setting rather than a ``trainer.`` one: the
            training step decides, and ``trainer.*`` keys are passed to Lightning's ``Trainer``
            as they are. Under DDP the processes agree (one reduced flag per step), so all skip
            or all stop; as Lightning refuses a ``None`` step there, they run a backward of zero
            and drop the gradients (with an fp16 ``GradScaler``: set them to inf so the scaler
            skips the step; that branch is untested, it needs a GPU).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        inference: Mapping | InferenceSettings,
        scheduler: Callable | None = None,
        num_val_images: int = 2,
        display_modality: str | list[str] = ("t1ce", "flair"),
        name: str = "model",
        compile: bool = False,
        skip_nonfinite: bool = False,
    ) -> None:
        super().__init__()
        display_modality = [display_modality] if isinstance(display_modality, str) else [str(m) for m in display_modality]
        settings = inference if isinstance(inference, InferenceSettings) else InferenceSettings.from_config(inference)
        inference = settings.as_dict()  # plain values in the hyper-parameters
        # Only plain values go into the checkpoint's hyper-parameters, so it loads with
        # torch.load(weights_only=True); the full resolved config travels under CONFIG_KEY.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        #: validation's sliding window and threshold (the ``inference`` config group)
        self.inference = settings
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net = net
        self.loss = loss
        num_outputs = int(getattr(net, "num_outputs", 1))
        self.train_loss = deep_supervision_loss(loss, num_outputs) if num_outputs > 1 else loss
        # kept out of the module tree so the checkpoint holds the plain network's weights only
        self.__dict__["compiled_net"] = torch.compile(net) if compile else net
        self.region_names: list[str] = []
        self.modalities: list[str] = []
        self.patch_size: list[int] = []
        self.display_channel = 0
        self.val_dice: RegionDice | None = None
        # mean validation loss over cases, reduced over all processes by torchmetrics (Lightning's
        # sync_dist mean divides an integer case count on gloo, wrong when counts differ)
        self.val_loss = MeanMetric()
        self.run_config: dict | None = None
        self.nonfinite_skipped = 0

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.configure_for(dm.region_names, dm.patch_size, dm.modalities)

    def configure_for(self, region_names, patch_size, modalities) -> None:
        """Bind the data's regions, patch size and modalities; check the network accepts them.

        Raises:
            ValueError: the patch does not suit the network (dimensionality or divisibility);
                the message starts with ``model=<name>``.
        """
        check = getattr(self.net, "check_patch_size", None)
        if check is not None:
            try:
                check(patch_size)
            except ValueError as exc:
                raise ValueError(f"model={self.hparams.name}: {exc}") from exc
        self.modalities = list(modalities)
        self.region_names = list(region_names)
        self.patch_size = list(patch_size)
        shown = [m for m in self.hparams.display_modality if m in modalities]
        self.display_channel = modalities.index(shown[0]) if shown else 0
        if self.val_dice is None:
            self.val_dice = RegionDice(len(self.region_names)).to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled_net(x)

    def describe_network(self) -> dict:
        """Parameter count and input/output shapes at the training patch (one forward in eval mode).

        Returns:
            ``{"model/name", "model/parameters", "model/input_shape", "model/output_shape"}``
            plus ``"model/deep_supervision_shapes"`` when the network has several outputs.
        """
        batch = self.trainer.datamodule.batch_size if self._trainer is not None and self.trainer.datamodule else 1
        shape = (batch, len(self.modalities), *self.patch_size)
        was_training = self.net.training
        self.net.eval()
        with torch.no_grad():
            out = self.net(torch.zeros(1, *shape[1:], device=self.device))
        self.net.train(was_training)
        info = {
            "model/name": self.hparams.name,
            "model/parameters": sum(p.numel() for p in self.net.parameters()),
            "model/input_shape": list(shape),
            "model/output_shape": [batch, *out.shape[1:]],
        }
        num_outputs = int(getattr(self.net, "num_outputs", 1))
        if num_outputs > 1:
            info["model/deep_supervision_shapes"] = [
                [batch, out.shape[1], *(p // 2**k for p in self.patch_size)] for k in range(num_outputs)
            ]
        return info

    def on_fit_start(self) -> None:
        info = self.describe_network()
        extra = f", deep supervision outputs {info['model/deep_supervision_shapes']}" if "model/deep_supervision_shapes" in info else ""
        log.info(
            f"model={info['model/name']}: {info['model/parameters']:,} parameters, input {info['model/input_shape']} "
            f"-> output {info['model/output_shape']}{extra}"
        )
        if self.trainer.is_global_zero:
            for lg in self.loggers:
                lg.log_hyperparams(info)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        logits = self.compiled_net(batch["image"])
        loss = self.train_loss(logits, batch["target"])
        if not self._all_finite(loss):
            self._on_nonfinite_loss(loss, batch, batch_idx)  # raises, or counts the batch to skip
            if self.trainer.world_size == 1:
                return None  # Lightning: no backward, no gradients
            # DDP refuses None: every process runs a backward of zero (so the gradient all-reduce
            # completes), then on_after_backward drops the gradients
            self._drop_gradients = True
            return sum((p * 0).sum() for p in self.parameters() if p.requires_grad)
        # sync_dist: under DDP the logged loss is the mean over all processes' samples, not rank 0's
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True
        )
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Lightning steps "step"-interval LR schedulers right after this: give the budget schedules
        # the progress reached with this step (Lightning counts it in global_step only after we return)
        schedules = [c.scheduler for c in self.trainer.lr_scheduler_configs if isinstance(c.scheduler, PolyLRByProgress)]
        if schedules:
            progress = training_progress(self.trainer, steps_done=self.trainer.global_step + 1)
            for schedule in schedules:
                schedule.progress = progress

    def on_after_backward(self) -> None:
        """After the zero backward of a skipped DDP step: no gradients, so the optimiser changes nothing."""
        if not getattr(self, "_drop_gradients", False):
            return
        self._drop_gradients = False
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        for param in self.parameters():
            if param.grad is not None:
                if scaler is not None:  # fp16 GradScaler needs gradients: inf makes it skip the step, as on overflow
                    param.grad.fill_(float("inf"))
                else:
                    param.grad = None

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every process (one reduced flag under DDP, so all agree)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return not bool(bad > 0)

    def _on_nonfinite_loss(self, loss: torch.Tensor, batch: Mapping, batch_idx: int) -> None:
        """Stop with :class:`NonFiniteLossError`, or skip the batch (``skip_nonfinite``) and count it.

        Raises:
            NonFiniteLossError: ``skip_nonfinite`` is off; the message names the global step,
                the epoch, the batch index, this process's loss and the case IDs of its batch.
        """
        cases = list(batch.get("case_id", [])) or ["(not in the batch)"]
        keys = batch["key"].tolist() if "key" in batch else []
        rank = f", rank {self.global_rank}" if self.trainer.world_size > 1 else ""
        which = "non-finite" if not torch.isfinite(loss) else "finite here, non-finite on another process"
        where = (
            f"training loss {loss.item()} ({which}) at global step {self.global_step}, epoch {self.current_epoch}, "
            f"batch {batch_idx}{rank}; cases in the batch: {cases}, sample keys (epoch, index): {keys}"
        )
        if not self.hparams.skip_nonfinite:
            raise NonFiniteLossError(
                f"{where}. The last checkpoint written (checkpoints/last.ckpt) is from before this step. Check these "
                "cases (lightning-brats check-data), try trainer.precision=32 or a lower model.optimizer.lr, or set "
                "model.skip_nonfinite=true to skip such batches"
            )
        self.nonfinite_skipped += 1
        log.warning(f"Skipped batch with {where}; {self.nonfinite_skipped} skipped so far (model.skip_nonfinite=true)")
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, on_epoch=False, batch_size=1)

    def validation_step(self, batch: Mapping, batch_idx: int) -> dict[str, torch.Tensor]:
        """Whole-case validation; returns ``{"pred": (B, R, *spatial) bool}`` for callbacks
        (:class:`~lightning_brats.callbacks.pictures.ValidationPictures` pictures it)."""
        image, target = batch["image"], batch["target"]
        logits = predict_logits(self.compiled_net, image, self.patch_size, self.inference.overlap, self.inference.sw_batch_size)
        # reduced once at the epoch's end (sum of losses / sum of cases over the processes): no
        # per-step collective, so processes may validate different numbers of cases
        self.val_loss.update(self.loss(logits, target))
        self.log("val/loss", self.val_loss, on_epoch=True, batch_size=1)
        thresholds = torch.tensor(self.inference.thresholds(self.region_names), device=logits.device)
        pred = torch.sigmoid(logits) > thresholds.view(1, -1, *[1] * (logits.ndim - 2))
        self.val_dice.update(pred, target)
        return {"pred": pred}

    def on_validation_epoch_end(self) -> None:
        # compute() sums the per-case Dice and the case counts over all processes, so every process
        # holds the Dice of all validation cases; sync_dist then averages equal values
        dice = self.val_dice.compute().reshape(-1)  # torchmetrics squeezes a single region to 0-d
        for name, value in zip(self.region_names, dice):
            self.log(f"val/dice_{name}", value.float(), sync_dist=True)
        self.log("val/dice_mean", dice.mean().float(), prog_bar=True, sync_dist=True)
        self.val_dice.reset()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": getattr(scheduler, "interval", "epoch")}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config
        checkpoint[SKIPPED_KEY] = self.nonfinite_skipped
        wandb_ids = [lg.version for lg in self.loggers if isinstance(lg, WandbLogger) and lg.version]
        if wandb_ids:  # global rank 0, the process that writes the checkpoint
            checkpoint[WANDB_ID_KEY] = str(wandb_ids[0])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint trained for other channels or regions before its weights are loaded."""
        datamodule = getattr(self._trainer, "datamodule", None)
        if datamodule is not None:  # a checkpoint saved before BratsDataModule was renamed
            adopt_legacy_state(checkpoint, datamodule)
        self.nonfinite_skipped = int(checkpoint.get(SKIPPED_KEY, 0))
        stored = checkpoint.get(CONFIG_KEY)
        if stored and self.run_config:
            check_same_channels(stored["data"], self.run_config["data"])
        elif stored:
            self.run_config = stored


def check_same_channels(trained: Mapping, wanted: Mapping) -> None:
    """Check that a network trained with data config ``trained`` suits data config ``wanted``.

    Channels are compared by name and order: the modalities are the inputs, the region names
    the outputs. The regions' label codes may differ (a BraTS 2020 model predicts the same WT,
    TC and ET on BraTS 2023 files, whose ET code is 3, not 4).

    Args:
        trained: the checkpoint's resolved ``data`` config (``modalities``, ``regions``).
        wanted: the current ``data`` config.

    Raises:
        ValueError: the modalities (input channels) or the region names (output channels)
            differ; the message says which and how.
    """
    problems = []
    if list(trained["modalities"]) != list(wanted["modalities"]):
        problems.append(
            f"input channels: trained on data.modalities={list(trained['modalities'])} "
            f"({len(trained['modalities'])} channels), this run has {list(wanted['modalities'])} ({len(wanted['modalities'])})"
        )
    if list(trained["regions"]) != list(wanted["regions"]):
        problems.append(
            f"output channels: trained for the regions {list(trained['regions'])} of data.regions "
            f"({len(trained['regions'])} outputs), this run has {list(wanted['regions'])} ({len(wanted['regions'])})"
        )
    if problems:
        raise ValueError("the checkpoint does not fit this model: " + "; ".join(problems))
