"""``lightning-brats tune-postprocessing``: choose a region's threshold, its small-component rule and the
largest-component rule on cross-validation probabilities and write it into the runs (see
:mod:`lightning_brats.inference.postprocessing_tuning` and ``conf/tune_postprocessing.yaml``).

Writes ``postprocessing_candidates.csv`` (every candidate's mean Dice) and ``postprocessing.yaml``
into ``output_dir`` and into every ``write_to`` / ``run_dir`` folder, prints the best candidates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

import lightning_brats  # noqa: F401  (registers resolvers)
from lightning_brats.configs import CONFIG_PATH
from lightning_brats.data.data_config import accept_flat_data_keys
from lightning_brats.data.readers import DataError, load_case, make_reader
from lightning_brats.data.release import Release
from lightning_brats.inference.postprocessing_tuning import (
    TuningResult,
    tune_postprocessing,
    write_tuned_postprocessing,
)
from lightning_brats.inference.prediction import output_paths, postprocessing_for, release_of
from lightning_brats.inference.sliding_window import InferenceSettings
from lightning_brats.io import find_job_dirs, write_csv

log = logging.getLogger("lightning_brats.tune_postprocessing")


def _run_folders(cfg: DictConfig) -> list[Path]:
    """``write_to`` folders, plus ``run_dir`` and its job folders (those holding ``.hydra/overrides.yaml``, found
    as ``lightning-brats summarize`` and ``predict.py run_dir=`` find them).

    Raises:
        FileNotFoundError: a folder does not exist.
    """
    folders = [Path(p) for p in (cfg.write_to or [])]
    if cfg.get("run_dir"):
        root = Path(cfg.run_dir)
        folders += [root, *(find_job_dirs(root) if root.is_dir() else [])]
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"write_to/run_dir: {folder} is not a folder")
    return folders


def tune(cfg: DictConfig) -> TuningResult:
    """Load the probabilities and labels, score the candidates, write the choice.

    Raises:
        DataError: no probabilities file for the cases, or a file that does not match its case.
        ValueError, FileNotFoundError: see :func:`tune_postprocessing`, :func:`_run_folders`.
    """
    data = release_of(cfg.data)
    release = Release.from_config(data["release"])
    regions, labels, modalities = release.regions, release.labels, data["preprocessing"]["modalities"]
    settings = InferenceSettings.from_config(cfg.inference)
    folders = _run_folders(cfg)
    probabilities = Path(cfg.probabilities)
    layout = make_reader(release.layout)
    cases = [c for c in layout.find_cases(Path(cfg.ground_truth)) if c.label is not None]
    wanted = set(cfg.cases) if cfg.get("cases") else {c.case_id for c in cases
                                                       if output_paths(probabilities, c.case_id)["probabilities"].is_file()}
    cases = [c for c in cases if c.case_id in wanted]
    missing = sorted(wanted - {c.case_id for c in cases})
    if missing or not cases:
        raise DataError(f"probabilities={probabilities}: no <case>_probabilities.nii.gz for labelled cases under "
                        f"ground_truth={cfg.ground_truth}{f' (not labelled there: {missing})' if missing else ''}; "
                        "write them with predict.py save_probabilities=true")

    def load():
        for files in cases:
            path = output_paths(probabilities, files.case_id)["probabilities"]
            try:
                probs = np.moveaxis(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32), -1, 0)
            except Exception as exc:  # nibabel raises many types for corrupt files
                raise DataError(f"{path}: cannot read the probabilities ({type(exc).__name__}: {exc})") from exc
            truth = load_case(files, modalities[:1], labels).label
            log.info(f"{files.case_id}: probabilities {tuple(probs.shape)}")
            yield files.case_id, probs, truth

    result = tune_postprocessing(
        load(), regions, settings, postprocessing_for(release, settings.postprocess), cfg.region,
        list(cfg.thresholds), list(cfg.min_voxels), float(cfg.min_gain),
        list(cfg.get("keep_largest") or [[]]),  # each choice read by region_names
    )
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = result.rows()
    write_csv(output_dir / "postprocessing_candidates.csv", rows, list(rows[0]))
    written = write_tuned_postprocessing(result, [output_dir, *folders])
    print_result(result)
    log.info(f"{result.region}: threshold {result.chosen.threshold}, min_voxels {result.chosen.min_voxels}, "
             f"keep_largest {list(result.chosen.keep_largest)} (was {result.current.threshold}, "
             f"{result.current.min_voxels}, {list(result.current.keep_largest)}; mean Dice {result.gain:+.4f} on "
             f"{len(result.cases)} cases) -> {', '.join(map(str, written))}")
    return result


def print_result(result: TuningResult, console: Console | None = None, top: int = 8) -> None:
    """The ``top`` candidates and the current rule as a table."""
    table = Table(title=f"{result.region.upper()} threshold x min_voxels x keep_largest on {len(result.cases)} cases "
                        "(mean Dice over regions)")
    for name in ("threshold", "min_voxels", "keep_largest", "dice_mean", f"dice_{result.region}", ""):
        table.add_column(name, justify="right")
    rows = result.rows()
    shown = rows[:top] + [r for r in rows[top:] if r["current"]]
    for row in shown:
        note = " ".join(n for n, on in (("chosen", row["chosen"]), ("current", row["current"])) if on)
        table.add_row(f"{row['threshold']:g}", str(row["min_voxels"]), row["keep_largest"] or "-", f"{row['dice_mean']:.4f}",
                      f"{row[f'dice_{result.region}']:.4f}", note)
    (console or Console()).print(table)


@accept_flat_data_keys  # data.spacing=... for data.preprocessing.spacing=... (lightning_brats.data.data_config)
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="tune_postprocessing")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    tune(cfg)


if __name__ == "__main__":
    main()
