"""Mean Dice and HD95 per institution group (2013_*, CBICA_*, TCIA*) of eval.py's metrics.csv files, and the paired
difference of each model against the first, with the Wilcoxon signed-rank p per group (markdown table rows).

With 4 cases in a group the smallest two-sided Wilcoxon p is 0.125: a group of 4 cannot be significant on its own.
    python experiments/cv_brats_cpu_vs_monai/by_institution.py NAME=metrics.csv NAME=metrics.csv ...
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

GROUPS = {"2013": "Brats18_2013_", "CBICA": "Brats18_CBICA_", "TCIA": "Brats18_TCIA"}
REGIONS = ("wt", "tc", "et")


def group_of(case: str) -> str:
    return next(g for g, prefix in GROUPS.items() if case.startswith(prefix))


def main(argv: list[str]) -> None:
    tables = {}
    for arg in argv:
        name, path = arg.split("=", 1)
        frame = pd.read_csv(path).set_index("case_id").sort_index()
        tables[name] = frame
    names = list(tables)
    base = tables[names[0]]
    print("| institution | cases | " + " | ".join(f"Dice WT / TC / ET {n}" for n in names) + " | "
          + " | ".join(f"{n} - {names[0]} (p)" for n in names[1:]) + " |")
    print("|---" * (2 + len(names) + len(names) - 1) + "|")
    for group in (*GROUPS, "all"):
        cases = [c for c in base.index if group == "all" or group_of(c) == group]
        cells = [" / ".join(f"{tables[n].loc[cases, f'dice_{r}'].mean():.3f}" for r in REGIONS) for n in names]
        diffs = []
        for n in names[1:]:
            parts = []
            for r in REGIONS:
                d = tables[n].loc[cases, f"dice_{r}"].to_numpy() - base.loc[cases, f"dice_{r}"].to_numpy()
                p = wilcoxon(d).pvalue if np.any(d != 0) else 1.0
                parts.append(f"{d.mean():+.3f} ({p:.2g})")
            diffs.append(" / ".join(parts))
        print(f"| {group} | {len(cases)} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    print()
    print("| institution | " + " | ".join(f"mean HD95 WT / TC / ET (mm) {n}" for n in names) + " |")
    print("|---" * (1 + len(names)) + "|")
    for group in (*GROUPS, "all"):
        cases = [c for c in base.index if group == "all" or group_of(c) == group]
        print(f"| {group} | " + " | ".join(
            " / ".join(f"{tables[n].loc[cases, f'hd95_{r}'].mean():.1f}" for r in REGIONS) for n in names) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
