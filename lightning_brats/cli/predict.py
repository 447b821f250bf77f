"""``python predict.py`` / ``lightning-brats-predict``: a checkpoint -> NIfTI label maps on the input grid.

See ``conf/predict.yaml`` for the options and :mod:`lightning_brats.prediction` for the steps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import lightning_brats  # noqa: F401  (registers resolvers)
from lightning_brats.configs import CONFIG_PATH
from lightning_brats.data.layouts import CaseFiles, DataError
from lightning_brats.hardware import configure_threads
from lightning_brats.inference import InferenceSettings
from lightning_brats.prediction import (
    Predictor,
    TrainedModel,
    check_not_inputs,
    files_from_paths,
    load_trained_model,
    output_paths,
    postprocessing_for,
    release_of,
    write_nifti,
)

log = logging.getLogger("lightning_brats.predict")


def build_predictor(cfg: DictConfig) -> Predictor:
    """The model of ``cfg.ckpt_path`` (release from ``cfg.data`` when given) with ``cfg.inference``'s settings;
    post-processing is the dataset's rule (``data.postprocess``) with ``inference.postprocess``'s non-null keys
    replacing it (:func:`~lightning_brats.prediction.postprocessing_for`)."""
    release = release_of(cfg.data) if cfg.get("data") else None
    settings = InferenceSettings.from_config(cfg.inference)
    model = load_trained_model(cfg.ckpt_path, release, settings.device)
    return Predictor(model, settings, postprocessing_for(model.data, settings.postprocess))


def find_input_cases(cfg: DictConfig, model: TrainedModel) -> list[CaseFiles]:
    """The cases to predict: ``cfg.files`` (explicit modality files) or the cases under ``cfg.input``
    (all, or those listed in ``cfg.cases``).

    Raises:
        ValueError: neither or both of ``input`` and ``files`` are given.
        DataError: ``input`` is not a folder or holds no case (the message names the layout), or
            a listed case is not there.
    """
    if bool(cfg.get("input")) == bool(cfg.get("files")):
        raise ValueError("give one of input=<dataset root or case folder> or files={modality: path, ...}")
    if cfg.get("files"):
        return [files_from_paths(OmegaConf.to_container(cfg.files), model.modalities, cfg.get("case_id"))]
    root = Path(cfg.input)
    if root.is_file():
        raise DataError(f"input={root} is a file; give its folder, or the modality files as files={{modality: path, ...}}")
    layout = hydra.utils.instantiate(model.data["layout"])
    cases = layout.find_cases(root)
    wanted = cfg.get("cases")
    if wanted:
        found = {c.case_id: c for c in cases}
        unknown = sorted(set(wanted) - set(found))
        if unknown:
            raise DataError(f"cases={unknown} not found under {root} ({len(found)} cases there)")
        cases = [found[c] for c in sorted(set(wanted))]
    return cases


def predict(cfg: DictConfig) -> dict:
    """Predict every case ``cfg`` names into ``cfg.output_dir``.

    Returns:
        ``{"output_dir", "cases" (ids), "predicted", "skipped", "seconds_per_case", "files" (case -> path)}``.

    Raises:
        FileNotFoundError, ValueError, DataError: a bad checkpoint, input or output (see
            :func:`~lightning_brats.prediction.load_trained_model`, :func:`find_input_cases`,
            :func:`~lightning_brats.prediction.check_not_inputs`); cases written before the
            error stay written.
    """
    predictor = build_predictor(cfg)
    model = predictor.model
    threads = configure_threads(num_workers=0)
    cases = find_input_cases(cfg, model)
    output_dir = Path(cfg.output_dir)
    planned = {c.case_id: output_paths(output_dir, c.case_id) for c in cases}
    check_not_inputs([p for paths in planned.values() for p in paths.values()], cases)
    output_dir.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cases if cfg.overwrite or not planned[c.case_id]["label"].exists()]
    skipped = len(cases) - len(todo)
    log.info(
        f"{model.checkpoint}: {len(cases)} cases under {cfg.get('input') or 'files='}, {skipped} already predicted "
        f"in {output_dir} (overwrite=true redoes them); modalities {model.modalities}, regions {list(model.regions)}, "
        f"window {model.patch_size}, flip TTA {'on' if predictor.settings.flip_tta else 'off'}, device {model.device}, "
        f"precision {predictor.precision} (inference.precision={cfg.inference.precision}), {threads} CPU threads"
    )
    seconds = []
    start = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("Predicting", total=len(todo))
        for files in todo:
            progress.update(task, description=f"Predicting {files.case_id}")
            result = predictor.predict_case(files)
            paths = planned[files.case_id]
            regions = ",".join(model.regions)
            write_nifti(result.label, result.case, paths["label"], f"lightning-brats labels; regions {regions}")
            if cfg.save_probabilities:
                probs = np.ascontiguousarray(np.moveaxis(result.probabilities, 0, -1), dtype=np.float32)
                write_nifti(probs, result.case, paths["probabilities"], f"lightning-brats probabilities: {regions}")
            seconds.append(result.seconds)
            counts = {int(c): int(n) for c, n in zip(*np.unique(result.label, return_counts=True)) if c}
            log.info(
                f"{files.case_id}: {result.seconds:.1f} s, label voxels {counts}"
                + (f", post-processing relabelled {result.relabelled_voxels} voxels" if result.relabelled_voxels else "")
            )
            progress.advance(task)
    per_case = float(np.mean(seconds)) if seconds else 0.0
    log.info(
        f"Predicted {len(todo)} cases ({skipped} skipped) in {time.perf_counter() - start:.1f} s, "
        f"{per_case:.1f} s per case -> {output_dir}"
    )
    return {
        "output_dir": output_dir,
        "cases": [c.case_id for c in cases],
        "predicted": len(todo),
        "skipped": skipped,
        "seconds_per_case": per_case,
        "files": {k: v["label"] for k, v in planned.items()},
        "data": model.data,
    }


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    predict(cfg)


if __name__ == "__main__":
    main()
