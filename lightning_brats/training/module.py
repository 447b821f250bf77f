"""The LightningModule: the training step, the optimiser, whole-case validation."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from pytorch_lightning.loggers import WandbLogger
from torch import nn
from torchmetrics import MeanMetric

from lightning_brats.data.context import check_context, input_channels
from lightning_brats.data.datamodule import adopt_legacy_state
from lightning_brats.evaluation.registry import get as registered_metric
from lightning_brats.inference.sliding_window import InferenceSettings, predict_logits
from lightning_brats.models.protocol import check_network

# the checkpoint schema lives in checkpoints.py (CONFIG_KEY and WANDB_ID_KEY are still importable from here)
from lightning_brats.training.checkpoints import (
    CONFIG_KEY,
    SKIPPED_KEY,
    UNTRUSTED_NOTE,
    WANDB_ID_KEY,
    CheckpointError,
    check_same_channels,
    load_checkpoint,
    module_arguments,
    trained_channels,
)
from lightning_brats.training.losses import deep_supervision_loss
from lightning_brats.training.nonfinite import NonFiniteLosses
from lightning_brats.training.schedules import PolyLRByProgress, training_progress

log = logging.getLogger(__name__)
#: Validation's Dice is the registry's ``dice`` (its name in ``val/dice_<region>``, its convention and
#: direction, the same as eval.py's), computed on batched tensors by its ``batched`` form, RegionDice.
VAL_DICE = registered_metric("dice")


class NonFiniteLossError(FloatingPointError):
    """The training loss was NaN or infinite; the message names the step, the epoch and the batch's cases."""


def window_size(patch_size: Sequence[int], sampling: str = "3d") -> list[int]:
    """The network's input size in voxels: ``data.patch_size`` cut to the ``data.sampling``
    dimensions (``"2d"``: the first two, the axial slice; ``"3d"``: all three).

    Raises:
        ValueError: ``sampling`` is not ``"2d"`` or ``"3d"``, or ``patch_size`` has fewer values.
    """
    if str(sampling) not in ("2d", "3d"):
        raise ValueError(f"data.sampling must be '2d' or '3d', got {sampling!r}")
    dims = int(str(sampling)[0])
    if len(patch_size) < dims:
        raise ValueError(f"data.patch_size={list(patch_size)} has fewer than {dims} values")
    return [int(p) for p in patch_size][:dims]


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts and lists (checkpoints load with ``weights_only=True``)."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_config(value: Any) -> bool:
    return isinstance(value, Mapping) or OmegaConf.is_config(value)


def _build(part: str, value: Any) -> Any:
    """``value`` itself, or the object its config (a ``_target_`` mapping) describes.

    Raises:
        ValueError: building it failed; the message names ``model.<part>`` and the reason.
    """
    if not _is_config(value):
        return value
    try:
        return hydra.utils.instantiate(value)
    except InstantiationException as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise ValueError(f"model.{part}: {cause}") from cause


class SegmentationModule(pl.LightningModule):
    """Region segmentation (one sigmoid output per region, e.g. WT, TC, ET).

    Everything it needs comes through its arguments, once, at construction: the data's regions,
    modalities, patch size and sampling come from the ``data`` config by interpolation
    (``regions: ${data.release.regions}`` ... in ``conf/model/unet3d.yaml``), so it works with any
    dataloaders (a datamodule or plain ``DataLoader`` s); the network's dimensionality and patch
    divisibility are checked then, before anything is prepared. The network, loss, optimiser and
    scheduler may be given as configs (``_target_`` mappings; the model configs set
    ``_recursive_: false`` so Hydra passes them unbuilt) and are then built here and kept in the
    hyper-parameters, so that ``SegmentationModule.load_from_checkpoint(path)`` rebuilds the module
    (see :meth:`load_from_checkpoint` and the schema in :mod:`lightning_brats.training.checkpoints`).

    The network is a :class:`~lightning_brats.models.SegmentationNetwork`; with deep supervision
    (``num_outputs`` above 1) it returns a list of
    logits in training; the loss is then MONAI's ``DeepSupervisionLoss`` with nnU-Net's weights,
    and validation uses the full-resolution output only (the network returns just that in eval
    mode). The module draws no pictures: :class:`~lightning_brats.training.callbacks.pictures.ValidationPictures`
    does, from what ``validation_step`` returns.

    Args:
        net: maps ``(B, C, *patch)`` to ``(B, R, *patch)`` logits; or its config.
        loss: maps ``(logits, target)`` to a scalar (e.g. :class:`~lightning_brats.training.losses.DiceBCELoss`);
            or its config.
        optimizer: partial ``torch.optim`` optimiser, called with the parameters; or its config
            (``_partial_: true``).
        inference: the ``inference`` config (``inference: ${inference}`` in ``conf/model/unet3d.yaml``)
            or an :class:`~lightning_brats.inference.sliding_window.InferenceSettings`: validation uses its
            ``overlap``, ``sw_batch_size`` and ``threshold``, as ``predict.py`` does (no flip TTA).
            Kept as :attr:`inference`.
        regions: the output channels: ``data.release.regions`` (name -> label codes) or the region names,
            in channel order.
        modalities: the input channels, in order (``data.preprocessing.modalities``).
        patch_size: ``data.patch_size`` in voxels: validation's sliding window, cut to the
            ``sampling`` dimensions (:func:`window_size`).
        sampling: ``"3d"`` (patches) or ``"2d"`` (axial slices), ``data.sampling``.
        context_slices: ``k``, ``data.context_slices``: a 2D network's input holds the ``2k + 1`` slices around
            its slice of every modality (:mod:`lightning_brats.data.context`), ``modalities x (2k + 1)``
            channels (:attr:`in_channels`); validation stacks whole cases so. 0: plain 2D (and 3D).
        batch_size: the global training batch (``data.batch_size``), for :meth:`describe_network`.
        scheduler: partial LR scheduler, called with the optimiser; or its config; or ``None``.
            Stepped at its ``interval`` attribute (``"step"`` for
            :class:`~lightning_brats.training.schedules.PolyLRByProgress`, whose ``progress`` this module sets
            from :func:`~lightning_brats.training.schedules.training_progress` after every optimiser step),
            else per epoch.
        num_val_images: cases per validation pictured (the picture ``eval.py`` writes) by
            :class:`~lightning_brats.training.callbacks.pictures.ValidationPictures` in every logger that holds
            images; under DDP the first of global rank 0's share of the cases.
        display_modality: modality shown under the overlays, or a list of them: the first the
            data has (default T1ce, else FLAIR, else the first channel).
        name: the model's name in messages and logs (the ``model=`` config name).
        compile: run the network through ``torch.compile`` for training and validation
            (the checkpoint keeps the plain network's weights).
        compile_mode: ``torch.compile``'s ``mode`` with ``compile``: ``None`` (its default),
            ``"reduce-overhead"`` (CUDA graphs: one launch per step where the shapes are static, as
            training patches are), ``"max-autotune"``.
        channels_last: keep the network's weights and inputs channels-last (``torch.channels_last_3d``
            for 3D, ``torch.channels_last`` for 2D): cuDNN's fastest convolutions on tensor cores
            read that layout; the checkpoint's weights are the same numbers either way.
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
        run_config: the run's resolved ``{"data": ..., "model": ...}`` config, which ``train.py``
            passes; written into every checkpoint under :data:`~lightning_brats.training.checkpoints.CONFIG_KEY`
            for prediction and evaluation (not a hyper-parameter: a restored module takes it from
            the checkpoint). Kept as :attr:`run_config`.

    Raises:
        ValueError: the patch does not suit the network (dimensionality or divisibility; the
            message starts with ``model=<name>``), a part's config cannot be built (names
            ``model.<part>``), or ``sampling``/``patch_size``/``context_slices`` are invalid.
        TypeError: the network is not a :class:`~lightning_brats.models.SegmentationNetwork`.
    """

    def __init__(
        self,
        net: nn.Module | Mapping,
        loss: nn.Module | Mapping,
        optimizer: Callable | Mapping,
        inference: Mapping | InferenceSettings,
        regions: Mapping[str, Sequence[int]] | Sequence[str],
        modalities: Sequence[str],
        patch_size: Sequence[int],
        sampling: str = "3d",
        batch_size: int = 1,
        scheduler: Callable | Mapping | None = None,
        num_val_images: int = 2,
        display_modality: str | Sequence[str] = ("t1ce", "flair"),
        name: str = "model",
        compile: bool = False,
        compile_mode: str | None = None,
        channels_last: bool = False,
        skip_nonfinite: bool = False,
        run_config: Mapping | None = None,
        context_slices: int = 0,
    ) -> None:
        super().__init__()
        # built first, in this order, as Hydra's recursive instantiation did: the same random initial weights
        self.net = _build("net", net)
        self.loss = _build("loss", loss)
        self.optimizer_factory = _build("optimizer", optimizer)
        self.scheduler_factory = _build("scheduler", scheduler)
        #: validation's sliding window and threshold (the ``inference`` config group)
        self.inference = inference if isinstance(inference, InferenceSettings) else InferenceSettings.from_config(inference)
        #: output channels, in order
        self.region_names = [str(r) for r in regions]
        #: input channels, in order
        self.modalities = [str(m) for m in modalities]
        #: validation's sliding-window size in voxels (2 or 3 values)
        self.patch_size = window_size(list(patch_size), sampling)
        #: neighbouring slices on each side as input channels (2D; ``data.context_slices``)
        self.context_slices = check_context(context_slices, sampling)
        try:
            check_network(self.net, name).check_patch_size(self.patch_size)
        except ValueError as exc:
            raise ValueError(f"model={name}: {exc}") from exc
        shown_first = [display_modality] if isinstance(display_modality, str) else [str(m) for m in display_modality]
        shown = [m for m in shown_first if m in self.modalities]
        #: the input channel pictures show
        self.display_channel = self.modalities.index(shown[0]) if shown else 0
        # Only plain values go into the checkpoint's hyper-parameters, so it loads with
        # torch.load(weights_only=True); objects given instead of configs are left out (a module
        # built that way restores only with them passed again).
        parts = {"net": net, "loss": loss, "optimizer": optimizer, "scheduler": scheduler}
        hparams = {
            **{k: _plain(v) for k, v in parts.items() if _is_config(v) or v is None},
            "inference": self.inference.as_dict(),
            "regions": _plain(regions) if _is_config(regions) else list(self.region_names),
            "modalities": list(self.modalities),
            "patch_size": [int(p) for p in patch_size],
            "sampling": str(sampling),
            "context_slices": self.context_slices,
            "batch_size": int(batch_size),
            "num_val_images": int(num_val_images),
            "display_modality": shown_first,
            "name": str(name),
            "compile": bool(compile),
            "compile_mode": compile_mode,
            "channels_last": bool(channels_last),
            "skip_nonfinite": bool(skip_nonfinite),
        }
        self.save_hyperparameters(hparams, logger=False)
        num_outputs = int(self.net.num_outputs)
        self.train_loss = deep_supervision_loss(self.loss, num_outputs) if num_outputs > 1 else self.loss
        # kept out of the module tree so the checkpoint holds the plain network's weights only
        #: the input layout (``torch.contiguous_format`` unless ``channels_last``)
        self.memory_format = (
            (torch.channels_last_3d if len(self.patch_size) == 3 else torch.channels_last) if channels_last else torch.contiguous_format
        )
        if channels_last:
            self.net.to(memory_format=self.memory_format)
        self.__dict__["compiled_net"] = torch.compile(self.net, mode=compile_mode) if compile else self.net
        self.val_dice = VAL_DICE.batched(len(self.region_names))
        # mean validation loss over cases, reduced over all processes by torchmetrics (Lightning's
        # sync_dist mean divides an integer case count on gloo, wrong when counts differ)
        self.val_loss = MeanMetric()
        #: the run's resolved data and model config (see ``run_config`` above), or ``None``
        self.run_config: dict | None = _plain(run_config) if run_config is not None else None
        self.nonfinite_skipped = 0
        #: non-finite training losses, recorded on the device and read now and then
        self.nonfinite = NonFiniteLosses()
        self._found_inf: torch.Tensor | None = None
        self._last_loss: torch.Tensor | None = None

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool | None = True,
        **kwargs: Any,
    ) -> SegmentationModule:
        """Lightning's ``load_from_checkpoint``, for this project's checkpoints, old and new.

        The file is first read and checked by :func:`~lightning_brats.training.checkpoints.load_checkpoint`
        (memory-mapped, ``weights_only=True``); the constructor arguments come from
        :func:`~lightning_brats.training.checkpoints.module_arguments` (the hyper-parameters, or for a
        checkpoint written before they held everything, its training config), overridden by
        ``kwargs`` (with ``hparams_file``: that file's values and ``kwargs`` only); then Lightning
        builds the module and loads the weights. A checkpoint holding
        configs with ``_target_`` builds those classes: load only checkpoints you trust to name
        classes (their weights are read with ``weights_only=True`` regardless).

        Raises:
            FileNotFoundError: no file at ``checkpoint_path``.
            lightning_brats.training.checkpoints.CheckpointError: the file is corrupt or not a Lightning
                checkpoint, ``weights_only=False`` was asked, or it lacks what rebuilds the module
                (the message names the file and what is missing).
            ValueError: as the constructor (e.g. ``kwargs`` giving a patch the network refuses).
        """
        if weights_only is False:
            raise CheckpointError(f"{checkpoint_path}: refusing weights_only=False; {UNTRUSTED_NOTE}")
        checkpoint = load_checkpoint(checkpoint_path, mmap=True, require_config=False)
        if "pytorch-lightning_version" not in checkpoint:  # Lightning's restore needs it to migrate old formats
            raise CheckpointError(
                f"{checkpoint_path}: no 'pytorch-lightning_version', not a checkpoint written by Lightning "
                "(trainer.save_checkpoint or train.py); use a .ckpt from a run's checkpoints/ folder"
            )
        # hparams_file replaces the stored hyper-parameters (Lightning's meaning): then only kwargs add to it
        arguments = kwargs if hparams_file is not None else {**module_arguments(checkpoint, checkpoint_path, kwargs), **kwargs}
        del checkpoint
        return super().load_from_checkpoint(
            checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict, weights_only=True,
            **arguments,
        )

    @property
    def in_channels(self) -> int:
        """The network's input channels: modalities x ``(2k + 1)`` (:func:`~lightning_brats.data.context.input_channels`)."""
        return input_channels(self.modalities, self.context_slices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, R, *spatial)`` of ``x (B, C, *spatial)`` (a list of them in training with deep supervision)."""
        return self.compiled_net(x.contiguous(memory_format=self.memory_format))

    def describe_network(self) -> dict:
        """Parameter count and input/output shapes at the training patch (one forward in eval mode).

        Returns:
            ``{"model/name", "model/parameters", "model/input_shape", "model/output_shape"}``
            plus ``"model/deep_supervision_shapes"`` when the network has several outputs.

        Raises:
            ValueError: the network does not take :attr:`in_channels` inputs (e.g. a ``model.net.in_channels``
                set by hand that leaves out ``data.context_slices``); the message names both keys.
        """
        batch = self.hparams.batch_size
        shape = (batch, self.in_channels, *self.patch_size)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                out = self.net(torch.zeros(1, *shape[1:], device=self.device))
        except RuntimeError as exc:
            if "channels" not in str(exc):
                raise
            raise ValueError(
                f"model={self.hparams.name}: the network does not take {self.in_channels} input channels "
                f"({len(self.modalities)} data.preprocessing.modalities x {2 * self.context_slices + 1} slices, "
                f"data.context_slices={self.context_slices}): {str(exc).splitlines()[0]}; leave model.net.in_channels "
                "to the configs' ${input_channels:${data.preprocessing.modalities},${data.context_slices}}"
            ) from exc
        finally:
            self.net.train(was_training)
        info = {
            "model/name": self.hparams.name,
            "model/parameters": sum(p.numel() for p in self.net.parameters()),
            "model/input_shape": list(shape),
            "model/output_shape": [batch, *out.shape[1:]],
        }
        num_outputs = int(self.net.num_outputs)
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
        """Forward, loss and logging of one batch, with no host synchronisation.

        Whether the loss is finite is recorded on the device (:class:`~lightning_brats.training.nonfinite.NonFiniteLosses`)
        and read every ``trainer.log_every_n_steps`` steps. With a fused optimiser (``fused: true``,
        the model configs' default) a non-finite step's update is skipped on the device through the
        optimiser's ``found_inf``; with any other optimiser and no ``GradScaler`` the flag is read at
        once (one synchronisation per step) and the step skipped or stopped as before.
        """
        logits = self(batch["image"])
        loss = self.train_loss(logits, batch["target"])
        bad = (~torch.isfinite(loss.detach())).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = (self.trainer.strategy.reduce(bad, reduce_op="sum") > 0).float()  # a device all-reduce
        self.nonfinite.observe(
            bad, loss, self.global_step, self.current_epoch, batch_idx,
            cases=list(batch.get("case_id", [])), keys=[batch["key"].detach()] if "key" in batch else [],
        )
        # sync_dist: under DDP the logged loss is the mean over all processes' samples, not rank 0's. A
        # non-finite step logs 0 with weight 0, so it does not enter the epoch's mean (no host read needed).
        # Not prog_bar: Lightning copies progress-bar values to the host after every batch (see on_train_batch_end)
        size = batch["image"].shape[0]
        self._last_loss = loss.detach()
        self.log(
            "train/loss", torch.where(bad > 0, torch.zeros_like(self._last_loss), self._last_loss), on_step=True,
            on_epoch=True, batch_size=(1 - bad) * size, sync_dist=True,
        )
        if self._skips_on_device():
            pending = self._found_inf
            self._found_inf = bad if pending is None else torch.maximum(pending, bad)
            self.trainer.optimizers[0].found_inf = self._found_inf
            return loss
        if self._grad_scaler() is not None:
            return loss  # the fp16 GradScaler skips a step with non-finite gradients itself
        if not self._check_nonfinite(log_count=True):  # no device skip: read the flag now (a sync per step)
            return loss
        if self.trainer.world_size == 1:
            return None  # Lightning: no backward, no gradients
        # DDP refuses None: every process runs a backward of zero (so the gradient all-reduce
        # completes), then on_after_backward drops the gradients
        self._drop_gradients = True
        return sum((p * 0).sum() for p in self.parameters() if p.requires_grad)

    def _grad_scaler(self):
        return getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None

    def _skips_on_device(self) -> bool:
        """One optimiser that honours ``found_inf`` on the device (``torch.optim``'s fused Adam, AdamW,
        SGD, ...: ``_step_supports_amp_scaling``) and no ``GradScaler`` (which sets ``found_inf`` itself)."""
        if self._trainer is None or len(self.trainer.optimizers) != 1:
            return False
        optimizer = self.trainer.optimizers[0]
        return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and self._grad_scaler() is None

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self._found_inf = None
        for optimizer in self.trainer.optimizers:
            optimizer.__dict__.pop("found_inf", None)
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
        scaler = self._grad_scaler()
        for param in self.parameters():
            if param.grad is not None:
                if scaler is not None:  # fp16 GradScaler needs gradients: inf makes it skip the step, as on overflow
                    param.grad.fill_(float("inf"))
                else:
                    param.grad = None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """``trainer.gradient_clip_val`` with fused optimisers too (Lightning's mixed-precision plugin refuses
        them, since a fused step unscales fp16 gradients itself): without a ``GradScaler`` (32, bf16-mixed)
        the gradients are not scaled and are clipped as Lightning clips them.

        Raises:
            ValueError: 16-mixed (a ``GradScaler``), a fused optimiser and gradient clipping together: the
                gradients are still scaled when they would be clipped.
        """
        if not gradient_clip_val:
            return
        if self._grad_scaler() is None:
            plugin = self.trainer.precision_plugin
            if gradient_clip_algorithm == "value":
                plugin.clip_grad_by_value(optimizer, gradient_clip_val)
            else:
                plugin.clip_grad_by_norm(optimizer, gradient_clip_val)
            return
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            raise ValueError(
                f"trainer.gradient_clip_val={gradient_clip_val} with trainer.precision=16-mixed and a fused optimiser: "
                "its gradients are still scaled when clipped; set model.optimizer.fused=false or train in bf16-mixed"
            )
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Every ``trainer.log_every_n_steps`` steps (when Lightning copies the logged values to the host
        too): read the non-finite flags, and show this process's last loss in the progress bar as
        ``loss``, a host value, so the bar's per-batch refresh reads nothing from the device."""
        if self.trainer.global_step % max(1, int(self.trainer.log_every_n_steps)) != 0:
            return
        self._check_nonfinite(log_count=True)
        if self._last_loss is not None:
            self.log("loss", self._last_loss.float().cpu(), prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_end(self) -> None:
        self._check_nonfinite(log_count=False)

    def _check_nonfinite(self, log_count: bool) -> bool:
        """Read the non-finite flags (one host synchronisation); stop or report what they say.

        Returns:
            whether a non-finite step was found (and, with ``skip_nonfinite``, counted).

        Raises:
            NonFiniteLossError: a non-finite loss and ``skip_nonfinite`` off; the message names the
                global step, the epoch, the batch index, this process's loss and the case IDs of its batch.
        """
        new, step = self.nonfinite.read()
        if not new:
            return False
        rank = f", rank {self.global_rank}" if self.trainer.world_size > 1 else ""
        which = "finite here, non-finite on another process" if math.isfinite(step.loss) else "non-finite"
        keys = [k for key in step.keys for k in (key.tolist() if isinstance(key, torch.Tensor) else [key])]
        more = f"; {new} non-finite steps since the last check, this the first" if new > 1 else ""
        where = (
            f"training loss {step.loss} ({which}) at global step {step.global_step}, epoch {step.epoch}, "
            f"batch {step.batch_idx}{rank}; cases in the batch: {step.cases}, sample keys (epoch, index): {keys}{more}"
        )
        if not self.hparams.skip_nonfinite:
            raise NonFiniteLossError(
                f"{where}. The last checkpoint written (checkpoints/last.ckpt) is from before this step. Check these "
                "cases (lightning-brats check-data), try trainer.precision=32 or a lower model.optimizer.lr, or set "
                "model.skip_nonfinite=true to skip such batches"
            )
        self.nonfinite_skipped = self.nonfinite.state()
        log.warning(f"Skipped batch with {where}; {self.nonfinite_skipped} skipped so far (model.skip_nonfinite=true)")
        if log_count:
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, on_epoch=False, batch_size=1)
        return True

    def validation_step(self, batch: Mapping, batch_idx: int) -> dict[str, torch.Tensor]:
        """Whole-case validation; returns ``{"pred": (B, R, *spatial) bool}`` for callbacks
        (:class:`~lightning_brats.training.callbacks.pictures.ValidationPictures` pictures it)."""
        image, target = batch["image"], batch["target"]
        logits = predict_logits(
            self.compiled_net, image, self.patch_size, self.inference.overlap, self.inference.sw_batch_size, self.context_slices
        )
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
            self.log(f"val/{VAL_DICE.name}_{name}", value.float(), sync_dist=True)
        self.log(f"val/{VAL_DICE.name}_mean", dice.mean().float(), prog_bar=True, sync_dist=True)
        self.val_dice.reset()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": getattr(scheduler, "interval", "epoch")}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None and self.trainer.training:
            self._check_nonfinite(log_count=False)  # no checkpoint of weights after an unreported non-finite step
        if self.run_config is not None:
            checkpoint[CONFIG_KEY] = self.run_config
        checkpoint[SKIPPED_KEY] = self.nonfinite_skipped
        wandb_ids = [lg.version for lg in self.loggers if isinstance(lg, WandbLogger) and lg.version]
        if wandb_ids:  # global rank 0, the process that writes the checkpoint
            checkpoint[WANDB_ID_KEY] = str(wandb_ids[0])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint trained for other channels or regions before its weights are loaded
        (see :func:`~lightning_brats.training.checkpoints.check_same_channels`); a module built without
        ``run_config`` takes the checkpoint's."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:  # a checkpoint saved before BratsDataModule was renamed
            adopt_legacy_state(checkpoint, datamodule)
        self.nonfinite_skipped = int(checkpoint.get(SKIPPED_KEY, 0))
        self.nonfinite.restore(self.nonfinite_skipped)
        trained = trained_channels(checkpoint)
        if trained is not None:
            check_same_channels(
                trained, {"modalities": self.modalities, "regions": self.region_names, "context_slices": self.context_slices}
            )
        if self.run_config is None and checkpoint.get(CONFIG_KEY):
            self.run_config = checkpoint[CONFIG_KEY]
