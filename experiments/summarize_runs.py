"""Print a Markdown table of training runs: wall time, steps, and validation Dice per region.

Usage:
    python experiments/summarize_runs.py logs/brats_cpu/runs/<run> [more run folders ...]

For each run folder it reads ``csv/metrics.csv`` (written by the CSV logger) and
``.hydra/overrides.yaml``; wall time is from the first to the last modification of the
run's files (seconds). Dice rows are the best validation during training by ``val/dice_mean`` (the checkpoint
``ModelCheckpoint`` keeps) and the last one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from lightning_brats.cli.summarize import METRICS_CSV, logged
from lightning_brats.evaluation.scoring import read_csv


def summarize(run: Path) -> dict:
    rows = read_csv(run / METRICS_CSV)
    trained = {r["epoch"] for r in rows if logged(r, "train/loss_epoch")}
    # validations during training; a final row at an epoch without training is validate_best
    vals = [r for r in rows if logged(r, "val/dice_mean") and r["epoch"] in trained]
    if not vals:
        raise SystemExit(f"{run}: no validation rows in csv/metrics.csv")
    best = max(vals, key=lambda r: r["val/dice_mean"])
    steps = int(max(r["step"] for r in rows if logged(r, "step")))
    times = [p.stat().st_mtime for p in run.rglob("*") if p.is_file()]
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    return {
        "overrides": " ".join(overrides),
        "minutes": (max(times) - (run / ".hydra" / "config.yaml").stat().st_mtime) / 60,
        "steps": steps + 1,
        "epochs": int(vals[-1]["epoch"]) + 1,
        "best": best,
        "last": vals[-1],
    }


def main(runs: list[str]) -> None:
    summaries = [summarize(Path(run)) for run in runs]
    # every region the runs logged (wt/tc/et for BraTS, abnormality for LGG), mean last
    regions = sorted({k for s in summaries for k in s["last"] if k.startswith("val/dice_") and k != "val/dice_mean"})
    names = " | ".join(f"Dice {k.removeprefix('val/dice_').upper()}" for k in regions)
    print(f"| overrides | wall (min) | epochs | steps | which | {names} | mean |")
    print("|---|---|---|---|---|" + "---|" * (len(regions) + 1))
    for s in summaries:
        for which in ("best", "last"):
            r = s[which]
            dice = " | ".join(f"{r[k]:.3f}" if logged(r, k) else "" for k in regions)
            print(
                f"| `{s['overrides']}` | {s['minutes']:.1f} | {s['epochs']} | {s['steps']} | {which} (epoch {int(r['epoch'])}) "
                f"| {dice} | {float(r['val/dice_mean']):.3f} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
