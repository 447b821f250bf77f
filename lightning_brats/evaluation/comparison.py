"""Comparing models on the same cases, as the BraTS challenge ranks them.

Input: two or more folders written by ``eval.py`` (``metrics.csv``: a row per case,
``<metric>_<region>`` columns; ``summary.csv``: names the regions). Every numeric metric column is
handled the same way, so the lesion-wise columns (``lesionwise_dice_et``, ...) are compared as soon
as ``eval.py`` writes them.

Two analyses:

* Paired per-case differences, for every pair of models and every metric and region:
  ``difference = B - A`` per case, the Wilcoxon signed-rank test of the differences
  (:func:`scipy.stats.wilcoxon`, two-sided, zero differences dropped, exact distribution for
  up to 50 non-zero differences without ties, normal approximation otherwise) and a bootstrap
  confidence interval of the mean difference (:func:`scipy.stats.bootstrap`, BCa, seeded).
  The p-values are not corrected for the many metrics, regions and pairs tested.
* The BraTS ranking scheme (Bakas et al. 2018, arXiv:1811.02629; Baid et al. 2021,
  arXiv:2107.02314; LaBella et al. 2024, arXiv:2405.09787): every model is ranked against the others
  on every case, for every ranked metric and region (Dice: higher is better; HD95: lower is
  better; every metric's direction is the one :mod:`lightning_brats.evaluation.registry` declares); a
  model's cumulative rank on a case is the mean of those ranks, and its final ranking score the
  mean of its cumulative ranks over the cases (lower is better). The published descriptions do not
  say how ties are ranked; here tied models share the mean of the ranks they span
  (``scipy.stats.rankdata(method="average")``), so two models equal on every case share the same
  score. Since 2023 the challenge ranks by the lesion-wise Dice and HD95; they are ranked
  by default when every folder has them, the per-case (legacy) Dice and HD95 otherwise.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightning_brats.evaluation import registry as metric_registry
from lightning_brats.evaluation.scoring import read_csv
from lightning_brats.io import write_csv

#: The per-case columns of ``metrics.csv`` that are not metrics.
ID_COLUMNS = ("case_id", "missing")
#: Metric names (the column prefix before ``_<region>``) that the challenge ranks, in order of
#: preference: the first group every folder has is ranked by default.
RANKED_METRICS = (("lesionwise_dice", "lesionwise_hd95"), ("dice", "hd95"))


class ComparisonError(ValueError):
    """The evaluation folders cannot be compared (different cases, no common metric, too few models);
    the message names the folders and what differs."""


def direction(metric: str) -> int:
    """Which way a metric is better: ``1`` higher (Dice), ``-1`` lower (HD95), ``0`` neither (volumes).

    As :mod:`lightning_brats.evaluation.registry` declares it; a metric the registry does not hold has
    no direction (compared, with no winner named, and never ranked), whatever its name.
    """
    return metric_registry.direction(metric)


@dataclass
class EvalFolder:
    """The per-case metrics of one ``eval.py`` output folder.

    Attributes:
        name: the model's name in tables and pictures.
        folder: the evaluation folder.
        cases: case IDs in ``metrics.csv`` order.
        regions: region names, in ``summary.csv`` order.
        values: ``(metric, region)`` -> ``(N,)`` float64 per-case values, in ``cases`` order.
        missing: the cases ``eval.py`` scored as empty (no prediction, ``allow_missing=true``).
    """

    name: str
    folder: Path
    cases: list[str]
    regions: list[str]
    values: dict[tuple[str, str], np.ndarray]
    missing: list[str] = field(default_factory=list)


def read_eval_folder(folder: Path | str, name: str | None = None) -> EvalFolder:
    """Read ``metrics.csv`` and ``summary.csv`` of an ``eval.py`` output folder.

    A column ``<metric>_<region>`` of ``metrics.csv`` is a metric when ``<region>`` is one of
    ``summary.csv``'s regions and every value is a number (NaN allowed).

    Raises:
        DataError: a file is missing or malformed (from :func:`~lightning_brats.evaluation.read_csv`).
        ComparisonError: ``metrics.csv`` has no row, no ``case_id`` column, a case twice, or no
            metric column; the message names the file.
    """
    folder = Path(folder)
    metrics_csv = folder / "metrics.csv"
    rows = read_csv(metrics_csv)
    summary = read_csv(folder / "summary.csv")
    if not rows or "case_id" not in rows[0]:
        raise ComparisonError(f"{metrics_csv}: no case rows (expected a case_id column and a row per case)")
    cases = [str(row["case_id"]) for row in rows]
    twice = sorted({c for c in cases if cases.count(c) > 1})
    if twice:
        raise ComparisonError(f"{metrics_csv}: cases listed more than once: {twice}")
    regions = list(dict.fromkeys(str(row["region"]) for row in summary if "region" in row))
    values = {}
    for column in rows[0]:
        if column in ID_COLUMNS:
            continue
        region = max((r for r in regions if column.endswith(f"_{r}")), key=len, default=None)
        cells = [row[column] for row in rows]
        if region is None or not all(isinstance(v, float) for v in cells):
            continue
        values[(column[: -len(region) - 1], region)] = np.asarray(cells, dtype=np.float64)
    if not values:
        raise ComparisonError(
            f"{metrics_csv}: no numeric <metric>_<region> column for the regions {regions} of {folder / 'summary.csv'}"
        )
    missing = [row["case_id"] for row in rows if row.get("missing") is True]
    return EvalFolder(name=name or folder.name, folder=folder, cases=cases, regions=regions, values=values, missing=missing)


def check_same_cases(folders: Sequence[EvalFolder]) -> list[str]:
    """The common case list (the first folder's order); an error when any folder's cases differ.

    Raises:
        ComparisonError: naming, for every folder that differs from the first, the cases it lacks
            and the cases it has in addition.
    """
    reference = folders[0]
    problems = []
    for other in folders[1:]:
        lacks = sorted(set(reference.cases) - set(other.cases))
        extra = sorted(set(other.cases) - set(reference.cases))
        if lacks or extra:
            problems.append(f"{other.folder} lacks {lacks} and has in addition {extra}")
    if problems:
        raise ComparisonError(
            f"the evaluation folders hold different cases (compared with {reference.folder}, {len(reference.cases)} "
            f"cases): {'; '.join(problems)}. Evaluate every model on the same cases (eval.py cases=[...])"
        )
    return list(reference.cases)


def paired_difference(
    a: np.ndarray, b: np.ndarray, seed: int = 0, n_resamples: int = 10000, confidence: float = 0.95
) -> dict:
    """Per-case differences ``b - a``: Wilcoxon signed-rank test and a bootstrap interval of the mean.

    Cases where either value is NaN are left out. With every difference zero the test has nothing
    to rank: p is 1 and the interval is ``[0, 0]``; with every difference equal (and non-zero) the
    interval is that difference. Otherwise the interval is scipy's BCa bootstrap (percentile
    bootstrap where BCa is undefined), seeded with ``seed``.

    Args:
        a, b: ``(N,)`` per-case values of the two models, same case order.
        seed: the bootstrap's random seed.
        n_resamples: bootstrap resamples.
        confidence: the interval's confidence level (0.95 for a 95 % interval).

    Returns:
        ``cases`` (pairs used), ``mean_a``, ``mean_b``, ``mean_difference``, ``median_difference``,
        ``ci_low``, ``ci_high``, ``wilcoxon_statistic`` (sum of the ranks of the smaller sign),
        ``p_value`` (two-sided); NaN where fewer than one (test) or two (interval) pairs exist.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    d = b - a
    nan = math.nan
    result = {
        "cases": int(d.size),
        "mean_a": float(a.mean()) if d.size else nan,
        "mean_b": float(b.mean()) if d.size else nan,
        "mean_difference": float(d.mean()) if d.size else nan,
        "median_difference": float(np.median(d)) if d.size else nan,
        "ci_low": nan,
        "ci_high": nan,
        "wilcoxon_statistic": nan,
        "p_value": nan,
    }
    if d.size == 0:
        return result
    if not np.any(d):
        result.update(ci_low=0.0, ci_high=0.0, wilcoxon_statistic=0.0, p_value=1.0)
        return result
    # zero differences are dropped first (Wilcoxon's own rule, scipy's zero_method="wilcox"), so the
    # exact null distribution applies whenever the rest has no ties (scipy uses it for <= 50 pairs)
    test = stats.wilcoxon(d[d != 0], alternative="two-sided", method="auto")
    result.update(wilcoxon_statistic=float(test.statistic), p_value=float(test.pvalue))
    if d.size < 2:
        return result
    if np.ptp(d) == 0:
        result.update(ci_low=float(d[0]), ci_high=float(d[0]))
        return result
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa warns (and returns NaN) on degenerate resamples
            interval = stats.bootstrap(
                (d,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method=method,
                vectorized=True, **_seeded(stats.bootstrap, seed),
            ).confidence_interval
        if np.isfinite(interval.low) and np.isfinite(interval.high):
            result.update(ci_low=float(interval.low), ci_high=float(interval.high))
            break
    return result


def _seeded(function, seed: int) -> dict:
    """``rng=`` (scipy >= 1.15) or ``random_state=`` (older), a fresh generator each call."""
    import inspect

    key = "rng" if "rng" in inspect.signature(function).parameters else "random_state"
    return {key: np.random.default_rng(seed)}


def brats_ranks(values: np.ndarray, directions: Sequence[int]) -> np.ndarray:
    """Rank the models against each other on every case, for every ranked metric and region.

    Args:
        values: ``(K, M, N)``: K (metric, region) pairs, M models, N cases.
        directions: ``(K,)``: ``1`` where higher is better (Dice), ``-1`` where lower is (HD95).

    Returns:
        ``(K, M, N)`` ranks, 1 = best; tied models share the mean of the ranks they span; a NaN
        value ranks last (tied with other NaNs).

    Raises:
        ComparisonError: a direction is neither 1 nor -1.
    """
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=np.float64)
    if any(d not in (1, -1) for d in directions):
        raise ComparisonError(f"every ranked metric needs a direction (1 higher or -1 lower is better), got {list(directions)}")
    score = -values * np.asarray(directions, dtype=np.float64)[:, None, None]  # lower score = better
    score = np.where(np.isnan(score), np.inf, score)
    return rankdata(score, method="average", axis=1)


@dataclass
class Comparison:
    """What :func:`compare` found.

    Attributes:
        models: the evaluation folders, in the order given.
        cases: the common cases.
        columns: the ``(metric, region)`` pairs every folder has, in the first folder's order.
        skipped: ``(metric, region)`` pairs only some folders have (not compared).
        paired: one dict per model pair (A before B in ``models``) and column: ``model_a``,
            ``model_b``, ``metric``, ``region``, the fields of :func:`paired_difference`, and
            ``better`` (the name of the model the mean difference favours; empty for metrics
            without a direction or no difference).
        ranked: the ``(metric, region)`` pairs ranked.
        ranks: ``(K, M, N)`` per-case ranks of :func:`brats_ranks`, ``ranked`` order.
        case_rank: ``(M, N)`` cumulative rank per model and case (mean over ``ranked``).
        score: ``(M,)`` final ranking score (mean of ``case_rank`` over cases; lower is better).
        place: ``(M,)`` leaderboard place, 1 = best (equal scores share the better place).
        seed, n_resamples, confidence: the bootstrap's settings.
    """

    models: list[EvalFolder]
    cases: list[str]
    columns: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    paired: list[dict]
    ranked: list[tuple[str, str]]
    ranks: np.ndarray
    case_rank: np.ndarray
    score: np.ndarray
    place: np.ndarray
    seed: int = 0
    n_resamples: int = 10000
    confidence: float = 0.95

    def values(self, column: tuple[str, str]) -> np.ndarray:
        """``(M, N)`` per-case values of one ``(metric, region)`` column, cases in :attr:`cases` order."""
        rows = []
        for model in self.models:
            index = {c: i for i, c in enumerate(model.cases)}
            rows.append(model.values[column][[index[c] for c in self.cases]])
        return np.stack(rows)


def _unique_names(folders: Sequence[Path]) -> list[str]:
    """Folder names; where two are equal, the paths below their common parent (then a number)."""
    names = [f.name for f in folders]
    if len(set(names)) < len(names):
        resolved = [f.resolve() for f in folders]
        common = Path(os.path.commonpath(resolved)) if len(set(resolved)) > 1 else resolved[0].parent
        names = [str(f.relative_to(common)) or f.name for f in resolved]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique


def default_ranked_metrics(columns: Sequence[tuple[str, str]]) -> list[str]:
    """The first group of :data:`RANKED_METRICS` that the columns have (lesion-wise before legacy)."""
    present = {metric for metric, _ in columns}
    for group in RANKED_METRICS:
        if all(m in present for m in group):
            return list(group)
    return [m for m in dict.fromkeys(metric for metric, _ in columns) if direction(m) != 0]


def compare(
    folders: Sequence[Path | str],
    names: Sequence[str] | None = None,
    rank: Sequence[str] | None = None,
    seed: int = 0,
    n_resamples: int = 10000,
    confidence: float = 0.95,
) -> Comparison:
    """Compare the evaluation folders of two or more models on their (identical) cases.

    Args:
        folders: ``eval.py`` output folders (``metrics.csv``, ``summary.csv``).
        names: the models' names (default: the folder names, made unique).
        rank: the metrics to rank (column prefixes such as ``dice``, ``hd95``); default
            :func:`default_ranked_metrics`. Each must have a direction (:func:`direction`).
        seed, n_resamples, confidence: the bootstrap interval's settings.

    Raises:
        ComparisonError: fewer than two folders, names of another length, different cases,
            no metric column common to all folders, or a ranked metric missing or without direction.
        DataError: a folder lacks ``metrics.csv`` or ``summary.csv`` or one is malformed.
    """
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise ComparisonError(f"compare needs two or more evaluation folders, got {[str(f) for f in folders]}")
    if names is not None and len(names) != len(folders):
        raise ComparisonError(f"{len(names)} names {list(names)} for {len(folders)} folders")
    names = list(names) if names is not None else _unique_names(folders)
    models = [read_eval_folder(f, n) for f, n in zip(folders, names)]
    cases = check_same_cases(models)
    columns = [c for c in models[0].values if all(c in m.values for m in models)]
    skipped = sorted({c for m in models for c in m.values} - set(columns))
    if not columns:
        raise ComparisonError(f"no <metric>_<region> column is common to {[str(f) for f in folders]}")

    paired = []
    comparison = Comparison(models, cases, columns, skipped, paired, [], np.empty(0), np.empty(0), np.empty(0),
                            np.empty(0), seed, n_resamples, confidence)
    for (i, a), (j, b) in itertools.combinations(enumerate(models), 2):
        for column in columns:
            values = comparison.values(column)
            stats = paired_difference(values[i], values[j], seed, n_resamples, confidence)
            sign = direction(column[0]) * np.sign(stats["mean_difference"]) if stats["cases"] else 0
            better = b.name if sign > 0 else a.name if sign < 0 else ""
            paired.append({"model_a": a.name, "model_b": b.name, "metric": column[0], "region": column[1],
                           **stats, "better": better})

    metrics = list(rank) if rank else default_ranked_metrics(columns)
    unknown = [m for m in metrics if not any(metric == m for metric, _ in columns)]
    if unknown:
        known = sorted({metric for metric, _ in columns})
        raise ComparisonError(f"rank={unknown}: not a metric of every folder (common metrics: {known})")
    undirected = [m for m in metrics if direction(m) == 0]
    if undirected or not metrics:
        directed = [m for m in dict.fromkeys(metric for metric, _ in columns) if direction(m) != 0]
        raise ComparisonError(
            f"rank={undirected or metrics}: no better direction known (lightning_brats.evaluation.registry declares "
            f"none); rank metrics that have one: {directed}"
        )
    ranked = [c for m in metrics for c in columns if c[0] == m]
    comparison.ranked = ranked
    comparison.ranks = brats_ranks(np.stack([comparison.values(c) for c in ranked]), [direction(m) for m, _ in ranked])
    comparison.case_rank = comparison.ranks.mean(axis=0)
    comparison.score = comparison.case_rank.mean(axis=1)
    from scipy.stats import rankdata

    comparison.place = rankdata(comparison.score, method="min").astype(int)
    return comparison


def ranking_rows(comparison: Comparison) -> list[dict]:
    """One dict per model, best first: ``place``, ``model``, ``folder``, ``score`` (final ranking score),
    ``missing`` (cases scored as empty) and ``mean_rank_<metric>_<region>`` per ranked column."""
    rows = []
    for m in np.argsort(comparison.score, kind="stable"):
        model = comparison.models[m]
        row = {"place": int(comparison.place[m]), "model": model.name, "folder": str(model.folder),
               "score": float(comparison.score[m]), "missing": len(model.missing)}
        for k, (metric, region) in enumerate(comparison.ranked):
            row[f"mean_rank_{metric}_{region}"] = float(comparison.ranks[k, m].mean())
        rows.append(row)
    return rows


def case_rank_rows(comparison: Comparison) -> list[dict]:
    """One dict per case and model: ``case_id``, ``model``, ``rank_<metric>_<region>`` per ranked
    column and ``cumulative_rank`` (their mean)."""
    rows = []
    for n, case in enumerate(comparison.cases):
        for m, model in enumerate(comparison.models):
            row = {"case_id": case, "model": model.name}
            row.update({f"rank_{metric}_{region}": float(comparison.ranks[k, m, n])
                        for k, (metric, region) in enumerate(comparison.ranked)})
            row["cumulative_rank"] = float(comparison.case_rank[m, n])
            rows.append(row)
    return rows


def differences_figure(comparison: Comparison, metrics: Sequence[str] | None = None):
    """Paired per-case differences ``B - A``: a panel per metric (row) and region (column), a strip of
    points per model pair, the mean with its bootstrap interval as a black bar, zero as a line.

    Args:
        metrics: the metrics drawn (default: the ranked ones).

    Returns:
        a matplotlib ``Figure``.
    """
    from lightning_brats.evaluation.visualize import _pyplot

    plt = _pyplot()
    metrics = list(metrics) if metrics else list(dict.fromkeys(m for m, _ in comparison.ranked))
    regions = list(dict.fromkeys(r for m, r in comparison.columns if m in metrics))
    pairs = list(itertools.combinations(range(len(comparison.models)), 2))
    stats = {(p["model_a"], p["model_b"], p["metric"], p["region"]): p for p in comparison.paired}
    width = max(2.8, 0.9 + 0.9 * len(pairs))
    fig, axes = plt.subplots(len(metrics), len(regions), figsize=(width * len(regions), 3.2 * len(metrics)),
                             dpi=100, squeeze=False)
    rng = np.random.default_rng(0)
    for row, metric in enumerate(metrics):
        for col, region in enumerate(regions):
            ax = axes[row, col]
            ax.axhline(0.0, color="grey", lw=0.8)
            if (metric, region) not in comparison.columns:
                ax.set_axis_off()
                continue
            values = comparison.values((metric, region))
            for x, (i, j) in enumerate(pairs):
                d = values[j] - values[i]
                ax.scatter(x + rng.uniform(-0.12, 0.12, d.size), d, s=12, alpha=0.6, zorder=3)
                s = stats[(comparison.models[i].name, comparison.models[j].name, metric, region)]
                if not math.isnan(s["mean_difference"]):
                    low, high = s["ci_low"], s["ci_high"]
                    err = None if math.isnan(low) else [[s["mean_difference"] - low], [high - s["mean_difference"]]]
                    ax.errorbar(x + 0.25, s["mean_difference"], yerr=err, fmt="o", color="black", capsize=4, zorder=4)
                    ax.annotate(f"p={s['p_value']:.3g}", (x + 0.3, s["mean_difference"]), fontsize=7,
                                xytext=(3, 0), textcoords="offset points", va="center")
            labels = [f"{comparison.models[j].name}\n− {comparison.models[i].name}" for i, j in pairs]
            ax.set_xticks(range(len(pairs)), labels, fontsize=7)
            ax.set_xlim(-0.5, len(pairs) - 0.2)
            better = {1: "higher is better", -1: "lower is better"}.get(direction(metric), "")
            ax.set_title(f"{metric} {region.upper()}", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{metric} difference\n({better})" if better else f"{metric} difference", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Paired per-case differences (n={len(comparison.cases)}; bar: mean, "
                 f"{comparison.confidence:.0%} bootstrap interval)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


#: Files :func:`write_comparison` writes into its folder.
PAIRED_CSV, RANKING_CSV, CASE_RANKS_CSV, DIFFERENCES_PNG = "paired.csv", "ranking.csv", "case_ranks.csv", "differences.png"


def write_comparison(comparison: Comparison, out: Path | str) -> dict[str, Path]:
    """Write ``paired.csv``, ``ranking.csv``, ``case_ranks.csv`` and ``differences.png`` into ``out``
    (created), each atomically; their paths by name."""
    from lightning_brats.evaluation.visualize import figure_to_png
    from lightning_brats.io import atomic_save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in (PAIRED_CSV, RANKING_CSV, CASE_RANKS_CSV, DIFFERENCES_PNG)}
    write_csv(paths[PAIRED_CSV], comparison.paired, list(comparison.paired[0]))
    ranking = ranking_rows(comparison)
    write_csv(paths[RANKING_CSV], ranking, list(ranking[0]))
    case_ranks = case_rank_rows(comparison)
    write_csv(paths[CASE_RANKS_CSV], case_ranks, list(case_ranks[0]))
    png = figure_to_png(differences_figure(comparison))
    atomic_save(paths[DIFFERENCES_PNG], lambda p: p.write_bytes(png))
    return paths
