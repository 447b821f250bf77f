"""Lesion-wise Dice during training, so that the checkpoint kept as best is the best by the leaderboard's
measure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from lightning_brats.data.labels import regions_to_labels
from lightning_brats.evaluation.lesion_metrics import DEFINITIONS, check_settings, score_lesion_wise

#: What a validation logs: ``val/lesionwise_dice_<region>`` per scored region and this mean of them.
MEAN_KEY = "val/lesionwise_dice_mean"


class LesionwiseValidation(pl.Callback):
    """Log ``val/lesionwise_dice_<region>`` and ``val/lesionwise_dice_mean`` after every validation.

    Each validated case is scored as ``eval.py`` scores it (:func:`~lightning_brats.evaluation.lesion_metrics.score_lesion_wise`
    with the data config's ``evaluation.metrics`` definition and ``evaluation.lesion_wise`` parameters),
    on the whole case the module has just predicted: the module's ``validation_step`` returns
    ``{"pred": (B, R, X, Y, Z) bool}`` and the batch holds ``target (B, R, X, Y, Z)``; both are turned
    back into label maps (:func:`~lightning_brats.data.labels.regions_to_labels`) so the scored regions may
    be the leaderboard's (``evaluation.regions``, e.g. NETC and SNFH of BraTS 2024 GLI) rather than the
    network's outputs. A region's value is the mean over the cases where it is defined (``brats2025``
    gives NaN where neither map has an instance); the mean is over the regions' values. Under DDP the
    per-region sums and counts are added over the processes, so every process holds the value of all
    validation cases (``sync_dist`` then averages equal values, as the module's ``val/dice_*``). Nothing is computed during Lightning's sanity check (no checkpoint is chosen then).

    Differences from ``eval.py``: the scores are computed on the preprocessed grid (brain bounding box,
    ``data.preprocessing.spacing``), before post-processing and without flip TTA; volumes and HD95 use
    ``data.preprocessing.spacing`` (1 mm when ``null``: the BraTS releases are 1 mm isotropic).

    Args:
        regions: the network's regions in output order (``data.release.regions``), name -> label codes.
        evaluation: the data config's ``evaluation`` block: ``metrics`` (``brats2023``, ``brats2024`` or
            ``brats2025``), ``lesion_wise`` and optionally ``regions`` (the scored regions; default
            ``regions``).
        enabled: ``data.release.evaluation.lesionwise_validation``; when false the callback does nothing.
        spacing: ``data.preprocessing.spacing`` in mm, or ``None`` for 1 mm.

    Raises:
        ValueError: enabled with a definition that has no lesion-wise Dice (``legacy``), or without the
            definition's parameters (:func:`~lightning_brats.evaluation.lesion_metrics.check_settings`).
    """

    def __init__(
        self,
        regions: Mapping[str, Sequence[int]],
        evaluation: Mapping | None = None,
        enabled: bool = True,
        spacing: Sequence[float] | None = None,
    ) -> None:
        evaluation = dict(evaluation or {})
        self.enabled = bool(enabled)
        self.regions = {str(k): [int(c) for c in v] for k, v in regions.items()}
        scored = evaluation.get("regions") or self.regions
        self.scored = {str(k): [int(c) for c in v] for k, v in scored.items()}
        self.definition = str(evaluation.get("metrics") or "legacy")
        self.settings = evaluation.get("lesion_wise")
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
        if self.enabled:
            if self.definition not in DEFINITIONS[1:]:
                raise ValueError(
                    f"data.release.evaluation.lesionwise_validation=true needs a lesion-wise definition in "
                    f"data.release.evaluation.metrics ({', '.join(DEFINITIONS[1:])}), got {self.definition!r}; set "
                    "data.release.evaluation.metrics=brats2023 or data.release.evaluation.lesionwise_validation=false"
                )
            check_settings(self.definition, self.settings, self.scored)
        self._sums = np.zeros((len(self.scored), 2))  # per scored region: sum of Dice, cases counted

    def _active(self, trainer: pl.Trainer) -> bool:
        return self.enabled and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sums[:] = 0

    def score_case(self, pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """Lesion-wise Dice per scored region of one case.

        Args:
            pred: ``(R, X, Y, Z)`` binary predicted regions, in the order of ``regions``.
            target: ``(R, X, Y, Z)`` binary ground-truth regions.

        Raises:
            ValueError: the masks are not ``(R, X, Y, Z)`` with one channel per region.
        """
        if pred.ndim != 4 or pred.shape != target.shape or pred.shape[0] != len(self.regions):
            raise ValueError(
                f"lesion-wise validation needs whole 3D cases, (regions={len(self.regions)}, X, Y, Z); got prediction "
                f"{tuple(pred.shape)} and target {tuple(target.shape)}; set data.release.evaluation.lesionwise_validation=false"
            )
        scores = score_lesion_wise(
            regions_to_labels(pred, self.regions), regions_to_labels(target, self.regions),
            self.scored, self.spacing, self.definition, self.settings,
        )
        return {region: float(scores[f"lesionwise_dice_{region}"]) for region in self.scored}

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch: Mapping, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._active(trainer):
            return
        if not isinstance(outputs, Mapping) or "pred" not in outputs:
            raise ValueError(
                f"LesionwiseValidation needs validation_step to return {{'pred': thresholded prediction}}; "
                f"{type(pl_module).__name__}.validation_step returned {type(outputs).__name__}"
            )
        preds, targets = outputs["pred"].detach().cpu().numpy(), batch["target"].detach().cpu().numpy() > 0.5
        for pred, target in zip(preds, targets):
            for i, dice in enumerate(self.score_case(pred, target).values()):
                if not math.isnan(dice):
                    self._sums[i] += (dice, 1)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        sums = torch.tensor(self._sums, dtype=torch.float32, device=pl_module.device)
        if trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        sums = sums.cpu().double()
        values = [float(s / n) if n > 0 else math.nan for s, n in sums.tolist()]
        for region, value in zip(self.scored, values):
            pl_module.log(f"val/lesionwise_dice_{region}", value, batch_size=1, sync_dist=True)
        defined = [v for v in values if not math.isnan(v)]
        pl_module.log(MEAN_KEY, sum(defined) / len(defined) if defined else math.nan, prog_bar=True, batch_size=1, sync_dist=True)
