"""The one registry of metrics: each declared once, with its name, unit, better direction and label.

``eval.py`` scores every metric registered here (the columns ``<name>_<region>`` of ``metrics.csv``
and the rows of ``summary.csv``), ``lightning-brats compare`` takes from it which way each metric is
better (no guessing from the name: an unregistered column has no direction), ``report.html`` shows
its label, unit and direction on the column headers, and validation logs the registry's ``dice``
(``val/dice_<region>``) with its batched form :class:`~lightning_brats.evaluation.metrics.RegionDice`.

Two kinds of metric:

* computed per case and region by ``compute(pred, target, spacing) -> float`` (``(X, Y, Z)`` binary
  masks, voxel size in mm): the BraTS per-case metrics of :mod:`lightning_brats.evaluation.metrics` (Dice,
  HD95, sensitivity, specificity, volumes; Bakas et al. 2018, arXiv:1811.02629), scored under
  every definition. Registering another such metric (:func:`register`) adds it to ``metrics.csv``,
  ``summary.csv`` and the comparison with no other change.
* scored by a definition's lesion-wise scorer (``compute`` is ``None``): the lesion-wise scores and
  lesion counts of the 2023+ leaderboards, :func:`lightning_brats.evaluation.lesion_metrics.score_lesion_wise`.
  Their parameters (dilation, minimum lesion volume, HD95 penalty) stay in the data config's
  ``evaluation.lesion_wise``; the registry only says which definitions write them and how to read them.

Adding a lesion-wise metric needs the scorer to return it too; the registry alone cannot compute it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lightning_brats.evaluation.metrics import (
    RegionDice,
    case_dice,
    case_hd95,
    case_sensitivity,
    case_specificity,
    volume_pred_ml,
    volume_true_ml,
)

#: What ``eval.py metrics=`` accepts: ``legacy`` (the per-case metrics only) and the leaderboards
#: whose lesion-wise scores :mod:`lightning_brats.evaluation.lesion_metrics` adds.
DEFINITIONS = ("legacy", "brats2023", "brats2024", "brats2025")
#: The definitions with a lesion-wise scorer.
LESION_WISE_DEFINITIONS = DEFINITIONS[1:]

#: ``compute(pred, target, spacing)``: ``(X, Y, Z)`` binary prediction and ground truth of one region
#: in one case and the voxel size in mm, to one number.
ComputeFn = Callable[[np.ndarray, np.ndarray, Sequence[float]], float]


@dataclass(frozen=True)
class MetricSpec:
    """One metric as every stage reads it.

    Attributes:
        name: the column prefix of ``metrics.csv`` (``<name>_<region>``) and the ``metric`` of
            ``summary.csv``; lower-case, no spaces.
        label: how a person reads it in tables and pictures, e.g. ``"HD95"``.
        unit: ``""`` for ratios (Dice), ``"mm"``, ``"mL"``, ``"lesions"`` (counts).
        higher_is_better: ``True`` (Dice), ``False`` (HD95, false positives) or ``None`` (volumes:
            neither; compare names no winner and cannot rank by it).
        compute: per case and region (see :data:`ComputeFn`), or ``None`` when a definition's
            lesion-wise scorer writes it.
        definitions: the ``eval.py metrics=`` definitions that score it.
        batched: the implementation on batched tensors used in validation, where there is one
            (:class:`~lightning_brats.evaluation.metrics.RegionDice` for ``dice``).
        source: where the definition comes from (paper, official script), for docs and the report.
    """

    name: str
    label: str
    unit: str
    higher_is_better: bool | None
    compute: ComputeFn | None = None
    definitions: tuple[str, ...] = DEFINITIONS
    batched: type | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower() or " " in self.name:
            raise ValueError(f"metric name {self.name!r}: use a lower-case column prefix without spaces, e.g. 'dice'")
        unknown = [d for d in self.definitions if d not in DEFINITIONS]
        if unknown or not self.definitions:
            raise ValueError(f"metric {self.name!r}: definitions {list(self.definitions)}; choose from {list(DEFINITIONS)}")
        if self.compute is None and "legacy" in self.definitions:
            raise ValueError(
                f"metric {self.name!r} has no compute function, so only a lesion-wise scorer can write it: "
                f"list definitions from {list(LESION_WISE_DEFINITIONS)}, or give compute=(pred, target, spacing) -> float"
            )

    @property
    def direction(self) -> int:
        """``1`` when higher is better, ``-1`` when lower is, ``0`` when neither."""
        return {True: 1, False: -1, None: 0}[self.higher_is_better]

    def describe(self) -> str:
        """The label with its unit and direction, e.g. ``"HD95 (mm; lower is better)"``."""
        better = {1: "higher is better", -1: "lower is better", 0: ""}[self.direction]
        notes = "; ".join(n for n in (self.unit, better) if n)
        return f"{self.label} ({notes})" if notes else self.label


_BAKAS = "Bakas et al. 2018, arXiv:1811.02629 (BraTS per-case metrics)"
_SALUJA = "BraTS 2023/2024 lesion-wise metrics, github.com/rachitsaluja/BraTS-2023-Metrics"
_PANOPTICA = "BraTS-Lighthouse 2025 through panoptica, brats-parse-metrics"

#: Every metric by name, in the order of ``metrics.csv`` (per-case ones first, then lesion-wise ones).
REGISTRY: dict[str, MetricSpec] = {}


def register(spec: MetricSpec, replace: bool = False) -> MetricSpec:
    """Add a metric to the registry (after those already there) and return it.

    Raises:
        ValueError: a metric of that name is registered and ``replace`` is false.
    """
    if spec.name in REGISTRY and not replace:
        raise ValueError(f"metric {spec.name!r} is registered already ({REGISTRY[spec.name]}); pass replace=True")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> MetricSpec:
    """Remove a metric (e.g. one a test registered) and return it.

    Raises:
        KeyError: no metric of that name.
    """
    return REGISTRY.pop(get(name).name)


def get(name: str) -> MetricSpec:
    """The registered metric called ``name``.

    Raises:
        KeyError: no metric of that name; the message lists the registered ones.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no metric {name!r} in the registry (registered: {', '.join(REGISTRY)})") from None


def direction(name: str) -> int:
    """Which way the metric ``name`` is better: ``1`` higher, ``-1`` lower, ``0`` neither or unregistered."""
    spec = REGISTRY.get(name)
    return spec.direction if spec is not None else 0


def _check_definition(definition: str) -> None:
    if definition not in DEFINITIONS:
        raise ValueError(f"metrics={definition!r} is unknown; choose one of {', '.join(DEFINITIONS)}")


def computed(definition: str = "legacy") -> tuple[MetricSpec, ...]:
    """The metrics computed per case and region (``compute`` set) under a definition, in registry order.

    Raises:
        ValueError: unknown definition.
    """
    _check_definition(definition)
    return tuple(s for s in REGISTRY.values() if s.compute is not None and definition in s.definitions)


def lesion_wise(definition: str) -> tuple[str, ...]:
    """The names a definition's lesion-wise scorer writes (none for ``legacy``), in registry order.

    Raises:
        ValueError: unknown definition.
    """
    _check_definition(definition)
    return tuple(s.name for s in REGISTRY.values() if s.compute is None and definition in s.definitions)


def scored(definition: str = "legacy") -> tuple[str, ...]:
    """Every metric ``eval.py metrics=<definition>`` writes: :func:`computed`, then :func:`lesion_wise`.

    Raises:
        ValueError: unknown definition.
    """
    return (*(s.name for s in computed(definition)), *lesion_wise(definition))


def split_column(column: str, regions: Sequence[str]) -> tuple[str, str] | None:
    """``(metric, region)`` of a ``<metric>_<region>`` column whose metric is registered, else ``None``
    (the longest matching region wins, so ``volume_true_ml_et`` is ``("volume_true_ml", "et")``)."""
    for region in sorted(regions, key=len, reverse=True):
        metric = column[: -len(region) - 1]
        if column.endswith(f"_{region}") and metric in REGISTRY:
            return metric, region
    return None


# -- the built-in metrics, in the column order eval.py has always written -------------------------------
for _spec in (
    MetricSpec("dice", "Dice", "", True, case_dice, batched=RegionDice,
               source=f"{_BAKAS}; 1 when both masks are empty, 0 when exactly one is"),
    MetricSpec("hd95", "HD95", "mm", False, case_hd95,
               source=f"{_BAKAS}; MONAI compute_hausdorff_distance(percentile=95); 373.13 mm when exactly one mask is empty"),
    MetricSpec("sensitivity", "Sensitivity", "", True, case_sensitivity, source=_BAKAS),
    MetricSpec("specificity", "Specificity", "", True, case_specificity, source=_BAKAS),
    MetricSpec("volume_pred_ml", "Predicted volume", "mL", None, volume_pred_ml),
    MetricSpec("volume_true_ml", "Ground-truth volume", "mL", None, volume_true_ml),
    MetricSpec("lesionwise_dice", "Lesion-wise Dice", "", True, definitions=LESION_WISE_DEFINITIONS,
               source=f"{_SALUJA}; {_PANOPTICA} (sq_dsc)"),
    MetricSpec("lesionwise_hd95", "Lesion-wise HD95", "mm", False, definitions=LESION_WISE_DEFINITIONS,
               source=f"{_SALUJA} (penalty: data.release.evaluation.lesion_wise.hd95_penalty); {_PANOPTICA} (sq_hd95, infinite -> 373)"),
    MetricSpec("lesionwise_tp", "Detected lesions", "lesions", True, definitions=LESION_WISE_DEFINITIONS,
               source=_SALUJA),
    MetricSpec("lesionwise_fp", "False-positive lesions", "lesions", False, definitions=LESION_WISE_DEFINITIONS,
               source=_SALUJA),
    MetricSpec("lesionwise_fn", "Missed lesions", "lesions", False, definitions=LESION_WISE_DEFINITIONS,
               source=_SALUJA),
    MetricSpec("lesionwise_precision", "Lesion-wise precision", "", True, definitions=("brats2025",), source=_PANOPTICA),
    MetricSpec("lesionwise_recall", "Lesion-wise recall", "", True, definitions=("brats2025",), source=_PANOPTICA),
    MetricSpec("lesionwise_f1", "Lesion-wise F1", "", True, definitions=("brats2025",), source=f"{_PANOPTICA} (rq)"),
):
    register(_spec)
del _spec
