"""``lightning-brats summarize <multirun dir>``: one table of a multirun's (or an Optuna sweep's) results.

Every job folder of the multirun (a folder holding ``.hydra/overrides.yaml``, as Hydra's
launchers write them: ``<sweep dir>/<job number>/`` by default) contributes one row: the
overrides that tell it apart from the other jobs and its final validation Dice per region,
read from the last row of ``csv/metrics.csv`` that has ``val/dice_mean``. That file is
written by Lightning's CSV logger, which both ``logger=csv`` and ``logger=wandb`` include; it
grows while the job trains, so a finished job's last validation row is what ``train.py``
returned (with ``validate_best=true``, the best checkpoint's validation). Jobs without one
(still running, failed before validating, ``debug=fast_dev_run`` or ``logger=null``) are
listed as skipped.

The jobs are then grouped by their overrides except ``data.fold``, so a sweep over models x
folds gives one row per model with the mean and the sample standard deviation (ddof=1; empty
for a single job) of each region's Dice over its folds. Both tables are printed and written,
atomically, to ``<multirun dir>/summary_jobs.csv`` and ``<multirun dir>/summary.csv``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from lightning_brats.data.data_config import upgrade_data_config
from lightning_brats.data.splits import FOLD_ALL, FOLD_KEY, job_trained_on_every_case
from lightning_brats.evaluation.scoring import describe, read_csv
from lightning_brats.io import find_job_dirs, no_job_folder, write_csv

#: Where the CSV logger (conf/logger/csv.yaml) writes each job's metrics, relative to the job folder.
METRICS_CSV = Path("csv") / "metrics.csv"
#: File names written into the multirun folder.
JOBS_CSV, SUMMARY_CSV = "summary_jobs.csv", "summary.csv"
_DICE = "val/dice_"


class SummaryError(ValueError):
    """The folder is not a multirun folder or holds no finished job; the message names it."""


@dataclass
class JobResult:
    """One finished job of a multirun.

    Attributes:
        name: the job folder relative to the multirun folder (``"0"``, ``"1"``, ...).
        overrides: the job's command-line overrides (``.hydra/overrides.yaml``), in order.
        dice: final ``val/dice_<region>`` and ``val/dice_mean`` values (Dice, 0..1).
    """

    name: str
    overrides: list[str]
    dice: dict[str, float]


@dataclass
class MultirunSummary:
    """What :func:`summarize_multirun` found.

    Attributes:
        root: the multirun folder.
        jobs: the finished jobs, in job-number order.
        skipped: ``(job folder, reason)`` for the job folders without a final validation, and those
            of ``data.fold=all`` (their validation cases are training cases).
        varying: the override keys whose values differ between jobs (what tells them apart).
        metrics: the Dice columns, regions in the config's order, ``val/dice_mean`` last.
        groups: one dict per group of jobs with equal overrides except ``fold_key``:
            ``group``, ``jobs``, ``folds``, then ``<metric>_mean`` and ``<metric>_std`` per metric.
        fold_key: the override averaged over (``data.fold``).
    """

    root: Path
    jobs: list[JobResult]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    varying: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    fold_key: str = FOLD_KEY


def override_key(override: str) -> str:
    """``"data.fold"`` for ``"data.fold=1"``, ``"+trainer.num_nodes=2"`` or ``"~callbacks"``."""
    return override.split("=", 1)[0].lstrip("+~")


def read_final_dice(metrics_csv: Path) -> dict[str, float] | None:
    """The last row of a CSV logger's ``metrics.csv`` with ``val/dice_mean``.

    Returns:
        ``{column: Dice}`` for the ``val/dice_*`` columns of that row, or ``None`` when the file
        is missing or has no such row.

    Raises:
        DataError: the file is malformed (:func:`~lightning_brats.evaluation.read_csv` names it).
    """
    if not metrics_csv.is_file():
        return None
    final = [row for row in read_csv(metrics_csv) if logged(row, f"{_DICE}mean")]
    if not final:
        return None
    return {k: v for k, v in final[-1].items() if k.startswith(_DICE) and logged(final[-1], k)}


def logged(row: dict, key: str) -> bool:
    """Whether a row of the CSV logger's ``metrics.csv`` (read by :func:`~lightning_brats.evaluation.read_csv`)
    holds a number under ``key`` (the logger leaves the cells of other steps' metrics empty)."""
    value = row.get(key)
    return isinstance(value, float) and not math.isnan(value)


def _region_order(job_dir: Path) -> list[str]:
    """The region names of a job's config (``data.release.regions``), or ``[]`` when it cannot be read."""
    try:
        config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
        regions = upgrade_data_config(config["data"])["release"]["regions"]  # a flat (older) job config too
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return []
    if isinstance(regions, dict):
        return [str(name) for name in regions]
    if isinstance(regions, list):
        return [str(r["name"]) if isinstance(r, dict) and "name" in r else str(r) for r in regions]
    return []


def summarize_multirun(root: Path | str, fold_key: str = FOLD_KEY) -> MultirunSummary:
    """Collect the finished jobs of a multirun folder and their Dice, per job and per group.

    Args:
        root: a multirun folder (``hydra.sweep.dir``, e.g. ``logs/train/multiruns/<date>_<time>``).
        fold_key: the override left out of the grouping.

    Raises:
        SummaryError: ``root`` does not exist, holds no job folder, or no job has a final
            validation row in its ``csv/metrics.csv``.
    """
    root = Path(root)
    if not root.is_dir():
        raise SummaryError(f"{root} is not a folder; pass a multirun folder such as logs/train/multiruns/<date>_<time>")
    job_dirs = find_job_dirs(root)
    if not job_dirs:
        raise SummaryError(no_job_folder(root))
    jobs, skipped, regions = [], [], []
    for job_dir in job_dirs:
        name = str(job_dir.relative_to(root))
        overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
        if job_trained_on_every_case(job_dir):  # whatever the grouping: its Dice is on training cases
            skipped.append((name, f"{FOLD_KEY}={FOLD_ALL} validates on training cases: not a cross-validation estimate"))
            continue
        final = read_final_dice(job_dir / METRICS_CSV)
        if final is None:
            skipped.append((name, f"no val/dice_mean in {METRICS_CSV} (not finished, failed, fast_dev_run or logger=null)"))
            continue
        jobs.append(JobResult(name=name, overrides=[str(o) for o in overrides], dice=final))
        regions = regions or _region_order(job_dir)
    if not jobs:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        raise SummaryError(f"{root} holds no finished job ({len(skipped)} job folders, none validated: {reasons})")

    # the override keys whose values differ between jobs (or that some jobs lack)
    values: dict[str, set] = {}
    for job in jobs:
        present = {override_key(o): o for o in job.overrides}
        for key in {k for j in jobs for k in map(override_key, j.overrides)}:
            values.setdefault(key, set()).add(present.get(key))
    ordered_keys = list(dict.fromkeys(override_key(o) for job in jobs for o in job.overrides))
    varying = [k for k in ordered_keys if len(values[k]) > 1]

    columns = {c for job in jobs for c in job.dice}
    known = [f"{_DICE}{r}" for r in regions if f"{_DICE}{r}" in columns]
    metrics = known + sorted(columns - set(known) - {f"{_DICE}mean"}) + [f"{_DICE}mean"] * (f"{_DICE}mean" in columns)

    grouped: dict[tuple, list[JobResult]] = {}
    for job in jobs:
        chosen = [o for o in job.overrides if override_key(o) in varying and override_key(o) != fold_key]
        key = tuple(sorted(chosen, key=lambda o: varying.index(override_key(o))))  # the same order for every job
        grouped.setdefault(key, []).append(job)
    groups = []
    for key, members in grouped.items():
        folds = [o.split("=", 1)[1] for job in members for o in job.overrides if override_key(o) == fold_key]
        row = {"group": " ".join(key) or "all jobs", "jobs": len(members), "folds": " ".join(folds)}
        for metric in metrics:
            stats = describe([job.dice[metric] for job in members if metric in job.dice])
            row[f"{metric}_mean"], row[f"{metric}_std"] = stats["mean"], stats["std"]
        groups.append(row)
    return MultirunSummary(
        root=root, jobs=jobs, skipped=skipped, varying=varying, metrics=metrics, groups=groups, fold_key=fold_key
    )


def job_rows(summary: MultirunSummary) -> list[dict]:
    """One dict per job: ``job``, ``overrides`` (the varying ones), then each Dice column."""
    rows = []
    for job in summary.jobs:
        shown = " ".join(o for o in job.overrides if override_key(o) in summary.varying)
        row = {"job": job.name, "overrides": shown}
        row.update({m: job.dice.get(m, math.nan) for m in summary.metrics})
        rows.append(row)
    return rows


def write_summary(summary: MultirunSummary) -> tuple[Path, Path]:
    """Write ``summary_jobs.csv`` and ``summary.csv`` into the multirun folder (atomically); their paths."""
    jobs_path, groups_path = summary.root / JOBS_CSV, summary.root / SUMMARY_CSV
    write_csv(jobs_path, job_rows(summary), digits=None, nan="")  # full precision; an empty std for one job
    write_csv(groups_path, summary.groups, digits=None, nan="")
    return jobs_path, groups_path


def _short(metric: str) -> str:
    return metric.removeprefix(_DICE)


def print_summary(summary: MultirunSummary, console: Console) -> None:
    """Print the per-job table, the grouped table (mean ± std) and the skipped jobs."""
    table = Table(title=f"{summary.root}: {len(summary.jobs)} finished jobs")
    for name in ("job", "overrides", *(f"Dice {_short(m)}" for m in summary.metrics)):
        table.add_column(name, justify="left" if name in ("job", "overrides") else "right")
    for row in job_rows(summary):
        table.add_row(row["job"], row["overrides"], *(f"{row[m]:.4f}" for m in summary.metrics))
    console.print(table)

    grouped = Table(title=f"mean ± std over {summary.fold_key} (sample std; '-' for one job)")
    for name in ("group", "jobs", "folds", *(f"Dice {_short(m)}" for m in summary.metrics)):
        grouped.add_column(name, justify="left" if name in ("group", "folds") else "right")
    for row in summary.groups:
        cells = []
        for m in summary.metrics:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            cells.append(f"{mean:.4f} ± {'-' if math.isnan(std) else f'{std:.4f}'}")
        grouped.add_row(row["group"], str(row["jobs"]), row["folds"], *cells)
    console.print(grouped)
    for name, why in summary.skipped:
        console.print(f"[yellow]skipped job {name}: {why}[/yellow]")
    results = summary.root / "optimization_results.yaml"
    if results.is_file():
        best = yaml.safe_load(results.read_text()) or {}
        console.print(f"Optuna: best value {best.get('best_value')} with {best.get('best_params')} ({results})")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``lightning-brats summarize <multirun dir> [--fold-key data.fold]``; exit status 1 on error."""
    parser = argparse.ArgumentParser(
        prog="lightning-brats summarize",
        description="Tabulate a multirun's final validation Dice per job and per group of folds; writes "
        f"{JOBS_CSV} and {SUMMARY_CSV} into the multirun folder.",
    )
    parser.add_argument("multirun_dir", type=Path, help="a multirun folder, e.g. logs/train/multiruns/<date>_<time>")
    parser.add_argument("--fold-key", default=FOLD_KEY, help=f"the override averaged over (default: {FOLD_KEY})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    console = Console()
    try:
        summary = summarize_multirun(args.multirun_dir, fold_key=args.fold_key)
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)  # unwrapped: the folder's path stays whole
        sys.exit(1)
    print_summary(summary, console)
    for path in write_summary(summary):
        console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
