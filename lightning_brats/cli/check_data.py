"""``lightning-brats check-data data=<name> data.root=...``: validate a dataset without training.

Reads every case with the configured reader (as training would) and prints a table of
cases, shapes, spacings and label voxel counts per class, then a summary and every problem
found (missing modalities, shape/affine mismatches, unknown labels, corrupt files, ...).
Exits with status 1 when there is a problem.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

import hydra
import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

import lightning_brats  # noqa: F401  (registers resolvers)
from lightning_brats.cli.errors import reports_bad_input
from lightning_brats.configs import CONFIG_PATH
from lightning_brats.data.data_config import accept_flat_data_keys
from lightning_brats.data.readers import DataError, load_case


@dataclass
class DatasetReport:
    """What ``check-data`` found.

    Attributes:
        rows: one dict per readable case: ``case_id``, ``shape`` (voxels), ``spacing`` (mm),
            ``label_voxels`` (label name -> voxel count, ``None`` for an unlabelled case).
        problems: one message per problem, each naming the file or case.
    """

    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_dataset(datamodule) -> DatasetReport:
    """Read every case of a datamodule's root; collect per-case facts and problems (never raises)."""
    report = DatasetReport()
    try:
        cases = datamodule.reader.find_cases(datamodule.root, problems=report.problems)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    for files in cases:
        try:
            case = load_case(files, datamodule.modalities, datamodule.labels)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        counts = None
        if case.label is not None:
            counts = {name: int(np.count_nonzero(case.label == code)) for name, code in datamodule.labels.items()}
        report.rows.append(
            {
                "case_id": case.case_id,
                "shape": tuple(int(n) for n in case.image.shape[1:]),
                "spacing": tuple(round(float(s), 3) for s in case.spacing),
                "label_voxels": counts,
            }
        )
    return report


def print_report(report: DatasetReport, datamodule, console: Console) -> None:
    """Print the per-case table, the summary and the problems."""
    labels = list(datamodule.labels)
    table = Table(title=f"{datamodule.root}  (modalities: {', '.join(datamodule.modalities)})")
    for column in ["case", "shape (voxels)", "spacing (mm)", *[f"{n} ({c})" for n, c in datamodule.labels.items()]]:
        table.add_column(column)
    for row in report.rows:
        counts = row["label_voxels"]
        cells = [str(counts[n]) for n in labels] if counts else ["no labels"] + [""] * (len(labels) - 1)
        table.add_row(row["case_id"], "x".join(map(str, row["shape"])), "x".join(map(str, row["spacing"])), *cells)
    console.print(table)
    unlabelled = [r["case_id"] for r in report.rows if r["label_voxels"] is None]
    shapes = Counter("x".join(map(str, r["shape"])) for r in report.rows)
    spacings = Counter("x".join(map(str, r["spacing"])) for r in report.rows)
    console.print(f"cases read: {len(report.rows)}; without labels: {len(unlabelled)} {unlabelled if unlabelled else ''}")
    console.print(f"shapes: {dict(shapes)}; spacings (mm): {dict(spacings)}")
    if report.problems:
        console.print(f"[bold red]{len(report.problems)} problem(s):[/bold red]")
        for problem in report.problems:
            console.print(f"  - {problem}", markup=False)
    else:
        console.print("[bold green]no problems found[/bold green]")


@accept_flat_data_keys  # data.spacing=... for data.preprocessing.spacing=... (lightning_brats.data.data_config)
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="check_data")
@reports_bad_input
def main(cfg: DictConfig) -> None:
    """Hydra entry point; exits with status 1 when a problem was found."""
    datamodule = hydra.utils.instantiate(cfg.data)
    report = check_dataset(datamodule)
    print_report(report, datamodule, Console(width=160))
    if report.problems:
        sys.exit(1)
