"""Choosing a region's threshold and connected-component rules on cross-validation predictions.

nnU-Net's ``determine_postprocessing`` (Isensee et al. 2021, ``nnunetv2/postprocessing``) tries its
post-processing on the cross-validation predictions of all folds and keeps it only where it improves
the mean Dice; the BraTS 2020 entry of the same group chose its enhancing-tumour rule (ET below a
voxel count becomes necrosis) the same way. Here the candidates are a grid of thresholds for one
region (ET by default) times a grid of ``min_voxels`` for that region's small-component rule times
the ``keep_largest`` choices (nnU-Net's keep-the-largest-component rule per region, e.g. none or TC)
(:class:`~lightning_brats.inference.prediction.PostProcessing`), scored by the mean over cases of the mean
Dice over all regions (BraTS conventions: both masks empty give 1). Each candidate is applied with
:func:`~lightning_brats.inference.prediction.probabilities_to_labels`, the function ``predict.py`` applies, so
the choice is exactly what prediction then does. The current rule is kept unless a candidate beats
it by more than ``min_gain``; the choice is written as ``postprocessing.yaml`` into the run folders
whose models made the predictions, where ``predict.py`` and ``eval.py`` pick it up.

The choice is made on the same cases it is scored on, so its gain is an optimistic estimate (as
nnU-Net's); it transfers to new cases only as far as the folds represent them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lightning_brats.data.labels import labels_to_regions
from lightning_brats.inference.prediction import PostProcessing, probabilities_to_labels, region_names
from lightning_brats.inference.sliding_window import InferenceSettings
from lightning_brats.io import atomic_save
from lightning_brats.training.checkpoints import run_dir_of

log = logging.getLogger(__name__)

#: The file a run folder holds the tuned rule in (read by :func:`read_tuned_postprocessing`).
TUNED_FILE = "postprocessing.yaml"
#: Default candidate grids: ET thresholds, ET component sizes in voxels of the original grid, and the
#: regions reduced to their largest component (none, or the tumour core).
DEFAULT_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
DEFAULT_MIN_VOXELS = (0, 25, 50, 100, 200, 300, 500, 750, 1000)
DEFAULT_KEEP_LARGEST = ((), ("tc",))


@dataclass(frozen=True)
class Candidate:
    """One rule: ``threshold`` for ``region`` (the others keep theirs), its ``min_voxels``, and the regions
    reduced to their largest component (``keep_largest``, ``()`` for none)."""

    threshold: float
    min_voxels: int
    keep_largest: tuple[str, ...] = ()

    def rule(self, region: str) -> PostProcessing | None:
        """The post-processing this candidate applies to label maps (``None`` when it changes nothing)."""
        rule = PostProcessing(region, self.min_voxels, self.keep_largest)
        return rule if rule else None


@dataclass
class TuningResult:
    """The outcome of :func:`tune_postprocessing`.

    Attributes:
        region: the tuned region.
        current: the rule in use before tuning; ``chosen``: the rule to use.
        scores: candidate -> mean over cases of the mean Dice over regions.
        region_dice: candidate -> mean Dice of ``region`` over cases.
        cases: the case IDs scored.
        thresholds: every region's threshold in the predictions' settings (the untuned regions keep theirs).
    """

    region: str
    current: Candidate
    chosen: Candidate
    scores: dict[Candidate, float]
    region_dice: dict[Candidate, float]
    cases: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        """Mean Dice of the chosen rule minus the current one's (0 when the current rule is kept)."""
        return self.scores[self.chosen] - self.scores[self.current]

    def rows(self) -> list[dict]:
        """One row per candidate, best first: ``threshold``, ``min_voxels``, ``keep_largest`` (region names
        joined by ``+``; empty for none), ``dice_mean``, ``dice_<region>``, ``current``, ``chosen``."""
        rows = [
            {"threshold": c.threshold, "min_voxels": c.min_voxels, "keep_largest": "+".join(c.keep_largest),
             "dice_mean": self.scores[c],
             f"dice_{self.region}": self.region_dice[c], "current": c == self.current, "chosen": c == self.chosen}
            for c in self.scores
        ]
        return sorted(rows, key=lambda r: -r["dice_mean"])

    def as_config(self) -> dict:
        """What ``postprocessing.yaml`` holds: the ``inference`` keys to apply and how they were chosen."""
        return {
            "threshold": {**self.thresholds, self.region: self.chosen.threshold},
            "postprocess": {"region": self.region, "min_voxels": self.chosen.min_voxels,
                            "keep_largest": list(self.chosen.keep_largest)},
            "chosen_on": {
                "cases": len(self.cases),
                "dice_mean_current": round(self.scores[self.current], 6),
                "dice_mean_chosen": round(self.scores[self.chosen], 6),
                "current": {"threshold": self.current.threshold, "min_voxels": self.current.min_voxels,
                            "keep_largest": list(self.current.keep_largest)},
            },
        }


def _dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(R,)`` Dice of ``(R, ...)`` boolean masks; 1 where both are empty (BraTS convention)."""
    pred, truth = pred.reshape(len(pred), -1), truth.reshape(len(truth), -1)
    inter = np.logical_and(pred, truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def _tumour_box(probs: np.ndarray, truth: np.ndarray, lowest: float) -> tuple[slice, ...]:
    """The bounding box of every voxel any candidate or the truth can mark (the rest scores the same)."""
    mask = (probs > lowest).any(0) | (truth > 0)
    if not mask.any():
        return tuple(slice(0, 1) for _ in truth.shape)
    where = np.nonzero(mask)
    return tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)


def tune_postprocessing(
    cases: Iterable[tuple[str, np.ndarray, np.ndarray]],
    regions: Mapping[str, Sequence[int]],
    settings: InferenceSettings,
    current: PostProcessing | None,
    region: str = "et",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_voxels: Sequence[int] = DEFAULT_MIN_VOXELS,
    min_gain: float = 0.0,
    keep_largest: Sequence[Sequence[str]] = DEFAULT_KEEP_LARGEST,
) -> TuningResult:
    """Score every (threshold, min_voxels, keep_largest) candidate for ``region`` on cases with known labels.

    Args:
        cases: ``(case_id, probabilities (R, X, Y, Z) float on the original grid, truth (X, Y, Z) label
            map)`` per case, e.g. predict.py's ``<case>_probabilities.nii.gz`` (moved to channels first)
            and the case's label file.
        regions: region name -> label codes, in the probabilities' channel order.
        settings: the inference settings the predictions were made with (the other regions' thresholds).
        current: the post-processing in use (the dataset's rule, :func:`~lightning_brats.inference.prediction.postprocessing_for`),
            or ``None``; with the current threshold it is the rule kept unless beaten.
        region: the region tuned (its threshold and its small-component rule), e.g. ``"et"``.
        thresholds, min_voxels: the candidate grids (voxels of the original grid; 0 = no rule).
        min_gain: how much a candidate's mean Dice must exceed the current rule's to be chosen.
        keep_largest: the largest-component choices tried, each a list of regions (``[]``: none); a
            choice naming a region the model lacks (TC for the LGG set) is left out with a log line.

    Returns:
        the scores of every candidate and the choice (the current rule on ties or small gains).

    Raises:
        ValueError: ``region`` is not one of ``regions``, no case is given, or a case's shapes disagree.
    """
    names = list(regions)
    if region not in names:
        raise ValueError(f"region={region!r} is not one of the model's regions {names}")
    base = dict(zip(names, settings.thresholds(names)))
    choices = []
    for choice in keep_largest:
        choice = region_names(choice)
        if set(choice) <= set(names):
            choices.append(choice)
        else:
            log.info(f"keep_largest={list(choice)} left out: the model's regions are {names}")
    choices = choices or [()]  # every choice left out: the grids without the rule
    current_rule = Candidate(float(base[region]), int(current.min_voxels) if current and current.region == region else 0,
                             tuple(current.keep_largest) if current else ())
    candidates = [Candidate(float(t), int(m), k) for t in thresholds for m in min_voxels for k in dict.fromkeys(choices)]
    if current_rule not in candidates:
        candidates.append(current_rule)
    lowest = min(min(c.threshold for c in candidates), *base.values())
    sums = {c: 0.0 for c in candidates}
    region_sums = {c: 0.0 for c in candidates}
    index = names.index(region)
    ids = []
    for case_id, probs, truth in cases:
        if probs.shape[1:] != truth.shape or probs.shape[0] != len(names):
            raise ValueError(f"{case_id}: probabilities {probs.shape} do not match the label {truth.shape} and regions {names}")
        box = _tumour_box(probs, truth, lowest)
        probs_box, truth_masks = probs[(slice(None), *box)], labels_to_regions(truth[box], regions).astype(bool)
        for threshold in sorted({c.threshold for c in candidates}):
            trial = InferenceSettings(**{**settings.as_dict(), "threshold": {**base, region: threshold}})
            for candidate in (c for c in candidates if c.threshold == threshold):
                label, _ = probabilities_to_labels(probs_box, regions, trial, candidate.rule(region))
                dice = _dice(labels_to_regions(label, regions).astype(bool), truth_masks)
                sums[candidate] += float(dice.mean())
                region_sums[candidate] += float(dice[index])
        ids.append(case_id)
    if not ids:
        raise ValueError("no case to tune on")
    scores = {c: s / len(ids) for c, s in sums.items()}
    region_dice = {c: s / len(ids) for c, s in region_sums.items()}
    best = max(candidates, key=lambda c: (scores[c], c == current_rule))
    chosen = best if scores[best] > scores[current_rule] + min_gain else current_rule
    return TuningResult(region, current_rule, chosen, scores, region_dice, ids, base)


def write_tuned_postprocessing(result: TuningResult, folders: Iterable[Path]) -> list[Path]:
    """Write ``postprocessing.yaml`` (:meth:`TuningResult.as_config`) atomically into each folder.

    Returns:
        the files written.
    """
    text = yaml.safe_dump(result.as_config(), sort_keys=False)
    written = []
    for folder in folders:
        path = Path(folder) / TUNED_FILE
        atomic_save(path, lambda p: Path(p).write_text(text))
        written.append(path)
    return written


def read_tuned_postprocessing(checkpoints: Sequence[Path], run_dir: str | Path | None = None) -> tuple[dict, list[Path]] | None:
    """The tuned rule of the runs that made ``checkpoints``: ``postprocessing.yaml`` in each checkpoint's run
    folder (the folder above ``checkpoints/``) and in ``run_dir``.

    Returns:
        ``({"threshold": {...}, "postprocess": {...}}, files)``, or ``None`` where no run has one.

    Raises:
        ValueError: the files disagree (an ensemble whose members were tuned differently; the message
            names two that differ), or one is not a mapping with ``threshold`` and ``postprocess``.
    """
    folders = [run_dir_of(p) for p in checkpoints]
    if run_dir:
        folders.append(Path(run_dir))
    files = [f / TUNED_FILE for f in dict.fromkeys(folders) if (f / TUNED_FILE).is_file()]
    if not files:
        return None
    rules = []
    for path in files:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the tuned post-processing ({exc})") from exc
        if not isinstance(data, dict) or "threshold" not in data or "postprocess" not in data:
            raise ValueError(f"{path}: expected the keys threshold and postprocess (lightning-brats tune-postprocessing writes it)")
        rules.append({"threshold": data["threshold"], "postprocess": data["postprocess"]})
    for path, rule in zip(files[1:], rules[1:]):
        if rule != rules[0]:
            raise ValueError(f"the tuned post-processing differs between {files[0]} and {path}; "
                             "tune the ensemble's runs together or pass tuned_postprocessing=false")
    return rules[0], files


def apply_tuned(settings: InferenceSettings, tuned: Mapping) -> InferenceSettings:
    """``settings`` with the tuned thresholds (every region's) and the tuned ``postprocess`` keys in place of its own."""
    return InferenceSettings(**{**settings.as_dict(), "threshold": tuned["threshold"],
                                "postprocess": {**(settings.postprocess or {}), **dict(tuned["postprocess"])}})
