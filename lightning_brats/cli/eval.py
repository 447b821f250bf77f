"""``python eval.py`` / ``lightning-brats-eval``: score segmentations the way BraTS does.

Either a folder of predictions (``predictions=``) against a labelled dataset root
(``ground_truth=``, read with ``data=<release>``), or a checkpoint (``ckpt_path=``) that first
predicts the dataset's cases. Writes ``metrics.csv`` (a row per case), ``summary.csv`` (statistics
per metric and region), a picture per case and a Dice box plot, prints the summary and logs all
of it to W&B (offline by default). ``metrics=brats2023|brats2024|brats2025`` adds the lesion-wise
scores and lesion counts of that year's leaderboard beside the legacy ones (default: the dataset's
``data.release.evaluation.metrics``). See ``conf/eval.yaml``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import lightning_brats  # noqa: F401  (registers resolvers)
from lightning_brats.cli.errors import reports_bad_input
from lightning_brats.configs import CONFIG_PATH
from lightning_brats.data.data_config import accept_flat_data_keys
from lightning_brats.data.labels import nested_region_codes
from lightning_brats.data.readers import DataError, load_case, make_reader
from lightning_brats.data.release import Release
from lightning_brats.evaluation.lesion_metrics import check_settings
from lightning_brats.evaluation.report import write_report
from lightning_brats.evaluation.scoring import (
    STATISTICS,
    case_metrics,
    read_prediction,
    score_case,
    summarize,
    write_csv,
)
from lightning_brats.evaluation.visualize import case_figure, dice_boxplot, figure_to_png
from lightning_brats.inference.prediction import release_of
from lightning_brats.io import atomic_save, remove_stale_temporaries

log = logging.getLogger("lightning_brats.eval")


def _data_config(cfg: DictConfig) -> dict:
    """The release to read the ground truth with: the predicted data config, or ``cfg.data``."""
    if not cfg.get("data"):
        raise ValueError(
            "eval.py needs the ground truth's release to read it: data=<name> (brats20, brats21, brats23, msd_task01, lgg), "
            "or ckpt_path= to predict with a checkpoint (its data config is used)"
        )
    return release_of(cfg.data)


def metric_settings(cfg: DictConfig, data: dict) -> tuple[str, dict | None, dict[str, list[int]]]:
    """The metric definition to score with, the release's lesion-wise parameters and the scored regions.

    ``cfg.metrics`` when given, else the release's ``evaluation.metrics`` (``data=``'s, else the
    checkpoint's), else ``legacy``. The scored regions are the leaderboard's, ``evaluation.regions``
    (e.g. BraTS 2024 GLI's NETC and SNFH beside WT, TC, ET and RC), else ``data.release.regions``.

    Args:
        cfg: the ``eval`` config.
        data: the ``data`` config the predictions were read with (current shape: ``data["release"]``).

    Raises:
        ValueError: the definition is unknown or lacks its parameters (checked before scoring).
    """
    release = Release.from_config(data["release"])  # data=<release>'s when given (it replaced the checkpoint's)
    evaluation = release.evaluation or {}
    definition = str(cfg.get("metrics") or evaluation.get("metrics") or "legacy")
    regions = {str(k): [int(c) for c in v] for k, v in (evaluation.get("regions") or release.regions).items()}
    check_settings(definition, evaluation.get("lesion_wise"), regions)
    return definition, evaluation.get("lesion_wise"), regions


def held_out_cases(ckpt_path: str | Path) -> list[str]:
    """The validation cases of a checkpoint's fold, from ``splits.json`` in its run folder.

    Args:
        ckpt_path: ``<run>/checkpoints/<name>.ckpt`` as ``train.py`` writes it.

    Raises:
        DataError: the run folder has no ``splits.json``, or it lacks the checkpoint's fold, or the
            checkpoint was trained with ``data.fold=all`` (every case: none is held out).
        lightning_brats.training.checkpoints.CheckpointError: a corrupt or foreign checkpoint (see
            :func:`~lightning_brats.training.checkpoints.load_checkpoint`).
    """
    from lightning_brats.data.splits import FOLD_ALL, read_splits
    from lightning_brats.training.checkpoints import load_checkpoint, run_dir_of, training_config

    path = run_dir_of(ckpt_path) / "splits.json"
    if not path.is_file():
        raise DataError(f"cases=held_out: no {path} (train.py copies the folds there); list the cases instead: cases=[...]")
    # memory-mapped: only the stored config is read, not the weights
    config = training_config(load_checkpoint(ckpt_path, mmap=True), ckpt_path)
    fold = config["data"].get("fold", 0)
    if str(fold) == FOLD_ALL:
        raise DataError(
            f"cases=held_out: {ckpt_path} was trained with data.fold=all, on every labelled case, so it has no held-out "
            "cases; score it on cases no run trained on (ground_truth=<a test set>, or cases=[...])"
        )
    fold = int(fold)
    folds = read_splits(path)
    if fold >= len(folds):
        raise DataError(f"{path}: no fold {fold} (the checkpoint's data.fold)")
    return sorted(folds[fold]["val"])


def _selected_cases(cfg: DictConfig) -> list[str] | None:
    """``cfg.cases`` as a list of case IDs (``held_out`` resolved), or ``None`` for all."""
    cases = cfg.get("cases")
    if not cases:
        return None
    if cases == "held_out":
        from lightning_brats.cli.predict import model_files

        checkpoints, exported = model_files(cfg) if _has_model(cfg) else ([], [])
        if len(checkpoints) + len(exported) > 1:
            raise ValueError(
                f"cases=held_out with an ensemble of {len(checkpoints) + len(exported)} models: every fold was trained on "
                "the others' held-out cases, so no case is held out from the ensemble; score it on cases no fold "
                "trained on (cases=[...] of a separate test set)"
            )
        if not checkpoints:
            raise ValueError("cases=held_out needs ckpt_path= (the fold comes from the checkpoint's run folder)")
        return held_out_cases(checkpoints[0])
    return [str(c) for c in cases]


def _has_model(cfg: DictConfig) -> bool:
    """Whether ``cfg`` names a model to predict with (``ckpt_path``, ``run_dir`` or ``exported``)."""
    return any(cfg.get(key) for key in ("ckpt_path", "run_dir", "exported"))


def _predict_first(cfg: DictConfig, cases: list[str] | None) -> tuple[Path, dict]:
    """Predict ``cfg.ground_truth``'s cases with ``cfg``'s model(s) into ``<output_dir>/predictions``."""
    from lightning_brats.cli.predict import predict

    predict_cfg = OmegaConf.create(
        {
            "ckpt_path": cfg.get("ckpt_path"),
            "run_dir": cfg.get("run_dir"),
            "exported": cfg.get("exported"),
            "input": cfg.ground_truth,
            "cases": cases,
            "files": None,
            "case_id": None,
            "output_dir": str(Path(cfg.output_dir) / "predictions"),
            "overwrite": cfg.overwrite,
            "save_probabilities": cfg.save_probabilities,
            "inference": cfg.inference,
            "tuned_postprocessing": cfg.get("tuned_postprocessing", True),
            "data": cfg.get("data"),
        }
    )
    result = predict(predict_cfg)
    return result["output_dir"], result["data"]


def evaluate(cfg: DictConfig) -> dict:
    """Score every labelled case under ``cfg.ground_truth``.

    Returns:
        ``{"rows": per-case dicts, "summary": per (metric, region) dicts, "output_dir": Path}``.

    Raises:
        DataError: the ground truth holds no labelled case (or not a listed one); a prediction
            is missing (unless ``allow_missing=true``), unreadable, off-grid or holds unknown labels.
        ValueError: neither ``predictions`` nor a model (``ckpt_path``, ``run_dir``, ``exported``) is
            given, no release is known, or ``cases=held_out`` with an ensemble.
        OSError: an output cannot be written (disk full, unwritable folder); the message names it and
            the previous file of that name is kept whole.
    """
    output_dir = Path(cfg.output_dir)
    selected = _selected_cases(cfg)
    if _has_model(cfg):
        predictions, data = _predict_first(cfg, selected)
    elif cfg.get("predictions"):
        predictions, data = Path(cfg.predictions), _data_config(cfg)
    else:
        raise ValueError(
            "give predictions=<folder of <case>.nii.gz> or a model to predict first: ckpt_path=<checkpoint> "
            "(or a list: an ensemble), run_dir=<multirun folder> or exported=<file.onnx|file.pt>"
        )
    definition, lesion_wise, regions = metric_settings(cfg, data)
    metrics = case_metrics(definition)
    release = Release.from_config(data["release"])
    labels = release.labels
    reader = make_reader(release.layout)
    cases = [c for c in reader.find_cases(Path(cfg.ground_truth)) if c.labelled]
    if selected is not None:
        unknown = sorted(set(selected) - {c.case_id for c in cases})
        if unknown:
            raise DataError(f"cases={unknown} are not labelled cases under ground_truth={cfg.ground_truth}")
        cases = [c for c in cases if c.case_id in set(selected)]
    if not cases:
        raise DataError(f"no labelled cases under ground_truth={cfg.ground_truth} ({reader.describe()})")
    missing = [c.case_id for c in cases if not (predictions / f"{c.case_id}.nii.gz").is_file()]
    if missing and not cfg.allow_missing:
        raise DataError(
            f"{len(missing)} of {len(cases)} labelled cases have no prediction in {predictions} "
            f"(expected <case>.nii.gz): {missing}; allow_missing=true scores them as empty"
        )
    modalities = data["preprocessing"]["modalities"]
    shown = [m for m in cfg.display.modality if m in modalities][:1] or [modalities[0]]
    nesting = [code for _, code in nested_region_codes(release.regions)]  # how the labels nest, for the pictures
    pictures = output_dir / "pictures"
    if cfg.pictures:
        pictures.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(pictures, log.warning)
    rows = []
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task(f"Scoring {len(cases)} cases", total=len(cases))
        for files in cases:
            case = load_case(files, shown, labels)
            path = predictions / f"{files.case_id}.nii.gz"
            prediction = np.zeros_like(case.label) if files.case_id in missing else read_prediction(path, case, labels)
            row = {"case_id": files.case_id, "missing": files.case_id in missing, **score_case(prediction, case.label, regions, case.spacing, definition, lesion_wise)}
            rows.append(row)
            if cfg.pictures:
                dice = ", ".join(f"{r.upper()} {row[f'dice_{r}']:.3f}" for r in regions)
                figure = case_figure(case.image[0], case.label, prediction, labels, nesting, f"{files.case_id}: Dice {dice}", shown[0])
                png = figure_to_png(figure)
                atomic_save(pictures / f"{files.case_id}.png", lambda p, png=png: p.write_bytes(png))
            progress.advance(task)
    summary = summarize(rows, list(regions), metrics)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir, log.warning)
    write_csv(output_dir / "metrics.csv", rows, ["case_id", "missing", *[f"{m}_{r}" for m in metrics for r in regions]])
    write_csv(output_dir / "summary.csv", summary, ["metric", "region", "cases", *STATISTICS])
    box = figure_to_png(dice_boxplot({r: [row[f"dice_{r}"] for row in rows] for r in regions}))
    atomic_save(output_dir / "dice_boxplot.png", lambda p: p.write_bytes(box))
    print_summary(summary, f"{len(rows)} cases of {cfg.ground_truth} ({len(missing)} missing, scored as empty), metrics={definition}")
    if cfg.get("ckpt_path"):  # the checkpoint's run keeps a record of every evaluation in its model card
        from lightning_brats.training.callbacks.model_card import append_evaluation

        append_evaluation(cfg.ckpt_path, summary, f"{len(rows)} cases of `{cfg.ground_truth}` ({len(missing)} missing); outputs `{output_dir}`")
    _log_to_wandb(cfg, rows, summary, output_dir)
    write_report(output_dir)  # report.html: summary, box plot, a sortable row and picture per case
    log.info(f"Wrote metrics.csv, summary.csv, dice_boxplot.png and {'pictures/ ' if cfg.pictures else ''}to {output_dir}")
    return {"rows": rows, "summary": summary, "output_dir": output_dir, "predictions": predictions, "metrics": definition}


def print_summary(summary: list[dict], title: str, console: Console | None = None) -> None:
    """The summary as a rich table: a row per metric and region, a column per statistic."""
    table = Table(title=title)
    for column in ("metric", "region", *STATISTICS):
        table.add_column(column, justify="left" if column in ("metric", "region") else "right")
    for row in summary:
        table.add_row(row["metric"], row["region"], *("-" if math.isnan(row[s]) else f"{row[s]:.4g}" for s in STATISTICS))
    (console or Console(width=120)).print(table)


def _log_to_wandb(cfg: DictConfig, rows: list[dict], summary: list[dict], output_dir: Path) -> None:
    """Per-case metrics as a W&B Table, the summary means and medians as numbers, the pictures as images."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg or "_target_" not in wandb_cfg:
        return
    import wandb

    logger = hydra.utils.instantiate(wandb_cfg)
    try:
        columns = list(rows[0])
        logger.log_table("eval/metrics", columns=columns, data=[[row[c] for c in columns] for row in rows])
        logger.log_table("eval/summary", columns=list(summary[0]), data=[list(s.values()) for s in summary])
        numbers = {f"eval/{s['metric']}_{s['region']}_{stat}": s[stat] for s in summary for stat in ("mean", "median")}
        logger.log_metrics({k: v for k, v in numbers.items() if not math.isnan(v)})
        logger.log_image("eval/dice_boxplot", images=[str(output_dir / "dice_boxplot.png")])
        pictures = sorted((output_dir / "pictures").glob("*.png"))
        if pictures:
            logger.log_image("eval/cases", images=[str(p) for p in pictures], caption=[p.stem for p in pictures])
    finally:
        wandb.finish()


@accept_flat_data_keys  # data.spacing=... for data.preprocessing.spacing=... (lightning_brats.data.data_config)
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@reports_bad_input
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    evaluate(cfg)


if __name__ == "__main__":
    main()
