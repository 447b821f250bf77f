"""Train every 3D ``model=`` variant with ``experiment=brats_cpu_3d`` under one time budget, then tabulate.

Usage:
    python experiments/compare_models.py --root ../shared/data/brats2018 [--minutes 8] [--models unet3d,segresnet]

Each variant runs ``python train.py experiment=brats_cpu_3d model=<name>`` on the same fold with
the same wall-clock budget (``trainer.max_time``), validating every epoch so that a slow
variant still gets validated; the checkpoint with the best mean Dice is validated at the end.
SwinUNETR cannot take brats_cpu_3d's 48^3 patches (multiples of 32, at least 64), so it trains
on 64^3 patches in batches of 2, with 200 samples per epoch to keep 100 steps per epoch.
Prints a Markdown table (parameters, epochs and steps reached, wall minutes, Dice per region
of the best checkpoint); record it in experiments/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from lightning_brats.cli.summarize import METRICS_CSV, logged
from lightning_brats.evaluation.scoring import read_csv

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "unet3d": [],
    "resunet3d": [],
    "attention_unet3d": [],
    "unet3d_ds": [],
    "segresnet": [],
    "swinunetr": ["data.patch_size=[64,64,64]", "data.batch_size=2", "data.samples_per_epoch=200"],
}


def run(name: str, root: str, minutes: int) -> Path:
    """Train one variant; return its run folder."""
    task = f"compare_models_{name}"
    command = [
        sys.executable, "train.py", "experiment=brats_cpu_3d", f"model={name}", f"data.root={root}", f"task_name={task}",
        f"trainer.max_time=00:00:{minutes:02d}:00", "trainer.check_val_every_n_epoch=1", *VARIANTS[name],
    ]
    print(" ".join(command[1:]), file=sys.stderr, flush=True)
    start = time.time()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    runs = sorted((REPO / "logs" / task / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    print(f"{name}: {(time.time() - start) / 60:.1f} min", file=sys.stderr, flush=True)
    return runs[-1]


def best_row(run: Path) -> tuple[dict, int, int]:
    """The final validation of the best checkpoint, and the epochs and steps trained."""
    rows = read_csv(run / METRICS_CSV)
    trained = [r for r in rows if logged(r, "train/loss_epoch")]
    final = [r for r in rows if logged(r, "val/dice_mean")][-1]  # validate_best's row
    steps = int(max(r["step"] for r in rows if logged(r, "step"))) + 1
    return final, len(trained), steps


def parameters(run: Path) -> int:
    import yaml

    hparams = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    return int(hparams["model/parameters"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="BraTS 2018-2021 layout data root")
    parser.add_argument("--minutes", type=int, default=8, help="wall-clock budget per variant")
    parser.add_argument("--models", default=",".join(VARIANTS))
    args = parser.parse_args()
    results = []
    for name in args.models.split(","):
        start = time.time()
        folder = run(name, args.root, args.minutes)
        results.append((name, folder, (time.time() - start) / 60))
    print(f"| model | params (M) | epochs | steps | wall (min) | Dice WT | Dice TC | Dice ET | mean |  (budget {args.minutes} min)")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, folder, minutes in results:
        row, epochs, steps = best_row(folder)
        print(
            f"| {name} | {parameters(folder) / 1e6:.2f} | {epochs} | {steps} | {minutes:.1f} | {float(row['val/dice_wt']):.3f} "
            f"| {float(row['val/dice_tc']):.3f} | {float(row['val/dice_et']):.3f} | {float(row['val/dice_mean']):.3f} |"
        )


if __name__ == "__main__":
    main()
