"""Scoring label maps like the BraTS challenge: per case and region, then summary statistics.

Regions (WT, TC, ET) are scored, not labels: each is the set of voxels whose label is one of
the region's codes in ``data.release.regions``. Per case and region: every metric of
:mod:`lightning_brats.evaluation.registry` with a compute function (built in: Dice, HD95 (mm),
sensitivity, specificity and volumes (mL), with the BraTS empty-mask conventions of
:func:`~lightning_brats.evaluation.metrics.case_region_metrics`; always computed), plus, for
``brats2023``/``brats2024``/``brats2025``, the lesion-wise scores and lesion counts of
:mod:`lightning_brats.evaluation.lesion_metrics`.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from lightning_brats.data.readers import DataError, LoadedCase, check_label_values, check_same_grid
from lightning_brats.evaluation import registry as metric_registry
from lightning_brats.evaluation.lesion_metrics import score_lesion_wise
from lightning_brats.io import atomic_save, write_csv  # noqa: F401  (write_csv moved to lightning_brats.io; importable from here too)

#: The built-in per-region metrics of the ``legacy`` definition, the column prefixes of ``metrics.csv``
#: (``dice_wt``, ``hd95_et``, ...): the registry's at import; :func:`case_metrics` reads it at call time.
METRICS = metric_registry.scored("legacy")
#: Statistics of ``summary.csv``, one column each.
STATISTICS = ("mean", "std", "median", "q25", "q75")


def case_metrics(definition: str = "legacy") -> tuple[str, ...]:
    """Per-region metrics a definition scores, from the registry
    (:func:`~lightning_brats.evaluation.registry.scored`): those computed per case and region, then the
    definition's lesion-wise ones.

    Raises:
        ValueError: unknown definition.
    """
    return metric_registry.scored(definition)


def score_case(
    prediction: np.ndarray,
    truth: np.ndarray,
    regions: Mapping[str, Sequence[int]],
    spacing: Sequence[float],
    definition: str = "legacy",
    lesion_wise: Mapping | None = None,
) -> dict[str, float]:
    """Challenge metrics of one case for every region.

    Args:
        prediction: ``(X, Y, Z)`` predicted label map (release codes).
        truth: ``(X, Y, Z)`` ground-truth label map, same grid.
        regions: region name -> label codes, e.g. ``{"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}``.
        spacing: voxel size in mm (HD95 in mm, volumes in mL).
        definition: ``legacy``, ``brats2023``, ``brats2024`` or ``brats2025``.
        lesion_wise: the data config's ``evaluation.lesion_wise`` (2023 and 2024 definitions).

    Returns:
        ``{"<metric>_<region>": value}`` for every metric of :func:`case_metrics`.

    Raises:
        ValueError: unknown definition or missing lesion-wise settings.
    """
    row = {}
    computed = metric_registry.computed(definition)
    for region, codes in regions.items():
        pred, true = np.isin(prediction, codes), np.isin(truth, codes)
        row.update({f"{m.name}_{region}": float(m.compute(pred, true, spacing)) for m in computed})
    row.update(score_lesion_wise(prediction, truth, regions, spacing, definition, lesion_wise))
    return row


def read_prediction(path: Path, case: LoadedCase, labels: Mapping[str, int]) -> np.ndarray:
    """Read a predicted label map and check it lies on the ground truth's grid with known labels.

    Args:
        path: ``<case>.nii.gz``.
        case: the ground-truth case (its ``label``, ``affine`` and files).
        labels: the release's label map (name -> code).

    Returns:
        ``(X, Y, Z)`` uint8 label map.

    Raises:
        DataError: the file is unreadable, its shape or affine differs from the ground truth's,
            or it holds label values outside the release's; the message names the file.
    """
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    truth_file = case.files.label_source if case.files is not None else "the ground truth"
    check_same_grid(path, data.shape, image.affine, f"the ground truth {truth_file}", case.label.shape, case.affine)
    if not np.all(np.equal(np.mod(data, 1), 0)):
        raise DataError(f"{path}: holds non-integer values; expected a label map with codes {dict(labels)}")
    check_label_values(path, data, labels)
    return data.astype(np.uint8)


def summarize(
    rows: Sequence[Mapping[str, float]], regions: Sequence[str], metrics: Sequence[str] | None = None
) -> list[dict]:
    """Mean, standard deviation (n - 1), median, 25th and 75th percentile per metric and region.

    NaN values (``brats2025`` where a case has no instance of a region) are left out, as the
    challenge's parser does; ``cases`` counts the values used.

    Args:
        rows: per-case rows of :func:`score_case`.
        regions: region names, in output order.
        metrics: metric names, in output order (default: :func:`case_metrics` of ``legacy``).

    Returns:
        one dict per (metric, region): ``metric``, ``region``, ``cases`` and :data:`STATISTICS`.
    """
    summary = []
    for metric in case_metrics() if metrics is None else metrics:
        for region in regions:
            values = np.asarray([row[f"{metric}_{region}"] for row in rows], dtype=np.float64)
            values = values[~np.isnan(values)]
            summary.append({"metric": metric, "region": region, "cases": int(values.size), **describe(values)})
    return summary


def describe(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """:data:`STATISTICS` of ``values`` (NaN left out): mean, sample standard deviation (ddof=1,
    NaN for fewer than two values), median, 25th and 75th percentile; NaN for no values.

    The one mean/std summary of the project: :func:`summarize` (per metric and region of an
    evaluation) and ``lightning-brats summarize`` (per group of multirun jobs) use it.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[~np.isnan(values)]
    stats = {
        "mean": values.mean() if values.size else np.nan,
        "std": values.std(ddof=1) if values.size > 1 else np.nan,
        "median": np.median(values) if values.size else np.nan,
        "q25": np.percentile(values, 25) if values.size else np.nan,
        "q75": np.percentile(values, 75) if values.size else np.nan,
    }
    return {k: float(v) for k, v in stats.items()}


#: Columns :func:`read_csv` keeps as text (case IDs such as ``"001"`` must not become numbers).
TEXT_COLUMNS = ("case_id", "metric", "region")


def read_csv(path: Path, text_columns: Sequence[str] = TEXT_COLUMNS) -> list[dict]:
    """Read a CSV back into rows: the project's one CSV reader, for the files :func:`write_csv`
    writes (``metrics.csv``, ``summary.csv``) and the CSV logger's ``csv/metrics.csv`` of a run.

    Values of ``text_columns`` stay strings; ``True``/``False`` become bools; other values become
    floats where they parse (``nan`` and an empty cell become NaN) and stay strings otherwise.

    Args:
        path: the CSV file.
        text_columns: columns never converted.

    Returns:
        one dict per row, keys in the header's order.

    Raises:
        DataError: the file is missing, has no header, or a row has more or fewer cells than the
            header; the message names the file (and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (eval.py writes metrics.csv and summary.csv into its output folder)")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file, expected a header line")
        rows = []
        for line, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) != len(header):
                raise DataError(f"{path}, line {line}: {len(cells)} cells for {len(header)} columns {header}")
            rows.append({k: v if k in text_columns else _parse_cell(v) for k, v in zip(header, cells)})
    return rows


def _parse_cell(text: str) -> float | bool | str:
    if text in ("True", "False"):
        return text == "True"
    if text == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return text
