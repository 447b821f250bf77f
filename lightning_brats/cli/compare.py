"""``lightning-brats compare <eval folder> <eval folder> ... [out=DIR] [names=a,b] [rank=dice,hd95] [seed=0]``.

Compares two or more ``eval.py`` output folders on the same cases (see
:mod:`lightning_brats.evaluation.comparison`): per metric and region the paired per-case differences with a
Wilcoxon signed-rank test and a bootstrap interval of the mean difference, and the BraTS ranking
(every case, metric and region ranked across the models, ranks averaged). Prints both as tables
and writes ``ranking.csv``, ``paired.csv``, ``case_ranks.csv`` and ``differences.png`` into ``out``
(default: a new folder ``logs/compare/<date>_<time>`` under ``$LIGHTNING_BRATS_ROOT`` or the
current directory, as the other commands' ``paths.log_dir``).
"""

from __future__ import annotations

import math
import os
import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lightning_brats.data.readers import DataError
from lightning_brats.evaluation.comparison import (
    CASE_RANKS_CSV,
    DIFFERENCES_PNG,
    PAIRED_CSV,
    RANKING_CSV,
    Comparison,
    ComparisonError,
    compare,
    ranking_rows,
    write_comparison,
)

USAGE = """usage: lightning-brats compare EVAL_DIR EVAL_DIR [EVAL_DIR ...] [out=DIR] [names=A,B,...] [rank=METRIC,...]
                               [seed=0] [resamples=10000] [confidence=0.95]

Compare models evaluated by eval.py on the same cases, as the BraTS challenge ranks them.
  EVAL_DIR     an eval.py output folder (metrics.csv, summary.csv), e.g. logs/eval/runs/<date>_<time>
  out=         where to write ranking.csv, paired.csv, case_ranks.csv, differences.png
               (default: a new folder logs/compare/<date>_<time>)
  names=       the models' names, comma-separated (default: the folder names)
  rank=        the metrics ranked (default: lesionwise_dice,lesionwise_hd95 when every folder has them,
               else dice,hd95)
  seed=, resamples=, confidence=   the bootstrap interval of the mean difference
"""

_OPTIONS = {"out", "names", "rank", "seed", "resamples", "confidence"}


def parse_args(argv: list[str]) -> tuple[list[Path], dict]:
    """Split ``argv`` into folders and ``key=value`` options.

    Raises:
        ComparisonError: an unknown ``key=`` option or a non-number for ``seed``/``resamples``/``confidence``.
    """
    folders, options = [], {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in _OPTIONS:
            options[key] = value
        elif sep and not Path(arg).exists():
            raise ComparisonError(f"unknown option {arg!r}; options: {', '.join(sorted(f'{o}=' for o in _OPTIONS))}")
        else:
            folders.append(Path(arg))
    try:
        parsed = {
            "out": Path(options["out"]) if options.get("out") else None,
            "names": [n.strip() for n in options["names"].split(",")] if options.get("names") else None,
            "rank": [m.strip() for m in options["rank"].split(",") if m.strip()] if options.get("rank") else None,
            "seed": int(options.get("seed", 0)),
            "n_resamples": int(options.get("resamples", 10000)),
            "confidence": float(options.get("confidence", 0.95)),
        }
    except ValueError as exc:
        raise ComparisonError(f"seed= and resamples= take integers, confidence= a number in (0, 1): {exc}") from exc
    return folders, parsed


def default_out() -> Path:
    """A new folder ``<root>/logs/compare/<date>_<time>`` (``<root>``: ``$LIGHTNING_BRATS_ROOT`` or ``.``)."""
    base = Path(os.environ.get("LIGHTNING_BRATS_ROOT", ".")) / "logs" / "compare"
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out, n = base / stamp, 1
    while out.exists():
        out, n = base / f"{stamp}_{n}", n + 1
    return out


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def print_comparison(comparison: Comparison, console: Console) -> None:
    """The ranking (place, score, mean rank per ranked metric and region) and the paired differences."""
    ranked = ", ".join(f"{m} {r.upper()}" for m, r in comparison.ranked)
    table = Table(title=f"BraTS ranking over {len(comparison.cases)} cases ({ranked}); lower is better")
    for name in ("place", "model", "score", *(f"{m} {r.upper()}" for m, r in comparison.ranked), "missing"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in ranking_rows(comparison):
        means = [_fmt(row[f"mean_rank_{m}_{r}"], 3) for m, r in comparison.ranked]
        table.add_row(str(row["place"]), row["model"], f"{row['score']:.3f}", *means, str(row["missing"]))
    console.print(table)

    paired = Table(title=f"Paired per-case differences B - A: mean [{comparison.confidence:.0%} bootstrap interval], "
               "Wilcoxon signed-rank p")
    for name in ("A", "B", "metric", "region", "n", "mean A", "mean B", "B - A", "interval", "p", "better"):
        paired.add_column(name, justify="left" if name in ("A", "B", "metric", "region", "better") else "right")
    for row in comparison.paired:
        interval = f"[{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
        p = row["p_value"]
        style = "bold" if not math.isnan(p) and p < 0.05 else None
        paired.add_row(row["model_a"], row["model_b"], row["metric"], row["region"], str(row["cases"]),
                       _fmt(row["mean_a"]), _fmt(row["mean_b"]), _fmt(row["mean_difference"]), interval, _fmt(p, 3),
                       row["better"], style=style)
    console.print(paired)
    if comparison.skipped:
        console.print(f"[yellow]not compared (only some folders have them): {comparison.skipped}[/yellow]")
    for model in comparison.models:
        if model.missing:
            console.print(f"[yellow]{model.name}: {len(model.missing)} cases had no prediction (scored as empty)[/yellow]")


def main(argv: list[str] | None = None) -> None:
    """Command line (see :data:`USAGE`); exit status 2 without arguments, 1 when the folders cannot be compared."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        sys.exit(0 if argv else 2)
    try:
        folders, options = parse_args(argv)
        out = options.pop("out") or default_out()
        comparison = compare(folders, **options)
    except (ComparisonError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    console = Console(width=max(Console().width, 140))
    print_comparison(comparison, console)
    paths = write_comparison(comparison, out)
    console.print(f"wrote {', '.join(paths[n].name for n in (RANKING_CSV, PAIRED_CSV, CASE_RANKS_CSV, DIFFERENCES_PNG))} "
                  f"to {out}")


if __name__ == "__main__":
    main()
