"""What every benchmark here shares: timing with repeats (median), the machine it ran on, composed
configs, and the rich table + CSV report.

Timings are medians of ``repeats`` runs (3 by default): on a CPU shared with other jobs the median
drops the run a neighbour slowed down, where a mean would keep it.
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Timing:
    """Medians over timed runs: ``wall`` seconds and ``cpu`` seconds of this process (``time.process_time``,
    which on a shared core is less disturbed by neighbours than wall time; work in other processes,
    such as loader workers, is not in it); ``runs`` every run's wall seconds."""

    wall: float
    cpu: float
    runs: tuple[float, ...]

    def runs_text(self) -> str:
        return " ".join(f"{r:.3g}" for r in self.runs)


#: the --tiny mode's 3D U-Net (with experiment=brats_cpu_3d): 4 base filters, batch 2 of 32^3 patches
TINY_3D_OVERRIDES = ("model.net.base_filters=4", "data.patch_size=[32,32,32]", "data.batch_size=2")


def median_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 0) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; the medians (:class:`Timing`)."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, start = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return Timing(statistics.median(walls), statistics.median(cpus), tuple(walls))


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work (timings of GPU code must include it); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def machine() -> dict:
    """CPU model, cores this process may use, torch threads, allocator and versions: the conditions of a run."""
    from lightning_brats.training.allocator import loaded_allocator

    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in line.split())
    except OSError:
        pass
    allocator = loaded_allocator()
    return {
        "cpu": model or platform.processor() or "unknown", "cpu_flags": flags, "cores_allowed": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "allocator": Path(allocator).name if allocator else "glibc malloc",
        "load_avg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def compose(overrides: Sequence[str]):
    """``conf/train.yaml`` composed with ``overrides`` (no Hydra run: for instantiating the model and
    data configs the way ``train.py`` does)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import lightning_brats  # noqa: F401  (registers the config resolvers)
    from lightning_brats.configs import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def report(rows: list[dict], csv_path: str | Path, title: str, conditions: dict | None = None,
           shown: Sequence[str] | None = None) -> None:
    """Print a rich table of ``rows`` (floats to 3 significant digits) and write them to ``csv_path``;
    ``conditions`` (e.g. :func:`machine`) are printed under the table. ``shown``: the table's columns
    (default all); the CSV has every column."""
    from rich.console import Console
    from rich.table import Table

    columns = list(dict.fromkeys(k for r in rows for k in r))
    table = Table(title=title)
    for column in shown or columns:
        table.add_column(column)
    for r in rows:
        table.add_row(*[f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in shown or columns])
    console = Console(width=200)
    console.print(table)
    if conditions:
        console.print(" ".join(f"{k}={v}" for k, v in conditions.items()))
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
