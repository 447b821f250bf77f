"""``python predict.py`` / ``lightning-brats-predict``: a checkpoint -> NIfTI label maps on the input grid.

Several checkpoints (``ckpt_path=[a.ckpt,b.ckpt]``, or ``run_dir=`` a multirun's best ones) or
exported files (``exported=model.onnx``) predict as one ensemble. See ``conf/predict.yaml`` for the options and :mod:`lightning_brats.inference.prediction` for the steps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from filelock import FileLock
from omegaconf import DictConfig, ListConfig, OmegaConf
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
from lightning_brats.cli.errors import reports_bad_input
from lightning_brats.configs import CONFIG_PATH
from lightning_brats.data.data_config import accept_flat_data_keys
from lightning_brats.data.readers import CaseSource, DataError, make_reader
from lightning_brats.inference.postprocessing_tuning import apply_tuned, read_tuned_postprocessing
from lightning_brats.inference.prediction import (
    Predictor,
    TrainedModel,
    check_not_inputs,
    files_from_paths,
    load_trained_model,
    multirun_checkpoints,
    output_paths,
    postprocessing_for,
    release_of,
    write_nifti,
)
from lightning_brats.inference.sliding_window import InferenceSettings
from lightning_brats.io import remove_stale_temporaries
from lightning_brats.training.hardware import configure_threads, out_of_memory

log = logging.getLogger("lightning_brats.predict")


def _as_list(value) -> list[str]:
    """``None`` -> ``[]``, one path -> ``[path]``, a list -> its paths."""
    if not value:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple, ListConfig)) else [str(value)]


def model_files(cfg: DictConfig) -> tuple[list[Path], list[Path]]:
    """``(checkpoints, exported files)`` that ``cfg`` names: ``ckpt_path`` (one or a list), the
    best checkpoint of every job of ``run_dir``, and ``exported`` (one or a list).

    Raises:
        ValueError: none is given.
        FileNotFoundError: ``run_dir`` holds no job or a job without its best checkpoint.
    """
    checkpoints = [Path(p) for p in _as_list(cfg.get("ckpt_path"))]
    if cfg.get("run_dir"):
        checkpoints += multirun_checkpoints(cfg.run_dir)
    exported = [Path(p) for p in _as_list(cfg.get("exported"))]
    if not checkpoints and not exported:
        raise ValueError(
            "give a model: ckpt_path=<checkpoint> (several for an ensemble: ckpt_path=[a.ckpt,b.ckpt]), "
            "run_dir=<multirun folder> (the best checkpoint of every job) or exported=<file.onnx|file.pt>"
        )
    return checkpoints, exported


def build_predictor(cfg: DictConfig) -> Predictor:
    """The model(s) ``cfg`` names (:func:`model_files`; release from ``cfg.data`` when given) with
    ``cfg.inference``'s settings; several models predict as an ensemble. Post-processing is the dataset's
    rule (``data.release.postprocess``) with ``inference.postprocess``'s non-null keys replacing it
    (:func:`~lightning_brats.inference.prediction.postprocessing_for`); where the runs hold a rule chosen on
    cross-validation (``postprocessing.yaml``, :mod:`lightning_brats.inference.postprocessing_tuning`) and
    ``tuned_postprocessing`` is true, its threshold and post-processing replace ``cfg.inference``'s.

    Raises:
        ValueError: the runs of an ensemble hold different tuned rules."""
    release = release_of(cfg.data) if cfg.get("data") else None
    settings = InferenceSettings.from_config(cfg.inference)
    checkpoints, exported = model_files(cfg)
    tuned = read_tuned_postprocessing(checkpoints, cfg.get("run_dir")) if cfg.get("tuned_postprocessing", True) else None
    if tuned is not None:
        settings = apply_tuned(settings, tuned[0])
        log.info(f"Post-processing chosen on cross-validation ({', '.join(map(str, tuned[1]))}): threshold "
                 f"{settings.threshold}, {settings.postprocess} (tuned_postprocessing=false ignores it)")
    models = [load_trained_model(path, release, settings.device) for path in checkpoints]
    if exported:
        from lightning_brats.inference.export import load_exported_model

        models += [load_exported_model(path, release, settings.device) for path in exported]
    return Predictor(models, settings, postprocessing_for(models[0].release, settings.postprocess))


def find_input_cases(cfg: DictConfig, model: TrainedModel) -> list[CaseSource]:
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
    cases = make_reader(model.release.layout).find_cases(root)
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
            :func:`~lightning_brats.inference.prediction.load_trained_model`, :func:`find_input_cases`,
            :func:`~lightning_brats.inference.prediction.check_not_inputs`); cases written before the
            error stay written.
        OSError: an output cannot be written (disk full, unwritable folder); the message names it.

    Several processes may predict into one ``output_dir`` at once: each case is predicted under a
    lock (``.<case>.lock``, :mod:`filelock`, removed after the case), so it is written by one of them
    and skipped by the others (unless ``overwrite=true``); every file is written atomically (never torn).
    """
    predictor = build_predictor(cfg)
    model = predictor.model
    threads = configure_threads(num_workers=0)
    cases = find_input_cases(cfg, model)
    output_dir = Path(cfg.output_dir)
    planned = {c.case_id: output_paths(output_dir, c.case_id) for c in cases}
    check_not_inputs([p for paths in planned.values() for p in paths.values()], cases)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir, log.warning)
    todo = [c for c in cases if cfg.overwrite or not planned[c.case_id]["label"].exists()]
    skipped = len(cases) - len(todo)
    sources = ", ".join(str(m.checkpoint) for m in predictor.models)
    log.info(
        f"{sources}{f' (ensemble of {len(predictor.models)})' if len(predictor.models) > 1 else ''}: {len(cases)} cases under {cfg.get('input') or 'files='}, {skipped} already predicted "
        f"in {output_dir} (overwrite=true redoes them); modalities {model.modalities}, regions {list(model.regions)}, "
        f"window {[m.patch_size for m in predictor.models]}, flip TTA {'on' if predictor.settings.flip_tta else 'off'}, device {model.device}, "
        f"precision {predictor.precision} (inference.precision={cfg.inference.precision}), {threads} CPU threads"
    )
    seconds = []
    start = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("Predicting", total=len(todo))
        for files in todo:
            paths = planned[files.case_id]
            # one process at a time per case: a second predict.py on the same folder waits for the case
            # and then skips it (atomic writes alone would keep files whole but predict it twice)
            lock = output_dir / f".{files.case_id}.lock"
            with FileLock(lock):
                try:
                    if not cfg.overwrite and paths["label"].exists():
                        log.info(f"{files.case_id}: predicted meanwhile by another process, skipped")
                        skipped += 1
                        progress.advance(task)
                        continue
                    progress.update(task, description=f"Predicting {files.case_id}")
                    try:
                        result = predictor.predict_case(files)
                    except torch.OutOfMemoryError as exc:
                        raise out_of_memory(
                            f"prediction of case {files.case_id}",
                            {"window": [m.patch_size for m in predictor.models], "inference.sw_batch_size": predictor.settings.sw_batch_size,
                             "inference.flip_tta": predictor.settings.flip_tta, "precision": predictor.precision},
                            "inference.sw_batch_size, or set inference.flip_tta=false or inference.device=cpu",
                            model.device,
                        ) from exc
                    regions = ",".join(model.regions)
                    if cfg.save_probabilities:  # the label map last: its presence says the case is done
                        probs = np.ascontiguousarray(np.moveaxis(result.probabilities, 0, -1), dtype=np.float32)
                        write_nifti(probs, result.case, paths["probabilities"], f"lightning-brats probabilities: {regions}")
                    write_nifti(result.label, result.case, paths["label"], f"lightning-brats labels; regions {regions}")
                finally:  # unlinked while held (filelock >= 4 retries a waiter whose inode was unlinked): no lock files left
                    lock.unlink(missing_ok=True)
            seconds.append(result.seconds)
            counts = {int(c): int(n) for c, n in zip(*np.unique(result.label, return_counts=True)) if c}
            log.info(
                f"{files.case_id}: {result.seconds:.1f} s, label voxels {counts}"
                + (f", post-processing relabelled {result.relabelled_voxels} voxels" if result.relabelled_voxels else "")
            )
            progress.advance(task)
    per_case = float(np.mean(seconds)) if seconds else 0.0
    log.info(
        f"Predicted {len(seconds)} cases ({skipped} skipped) in {time.perf_counter() - start:.1f} s, "
        f"{per_case:.1f} s per case -> {output_dir}"
    )
    return {
        "output_dir": output_dir,
        "cases": [c.case_id for c in cases],
        "predicted": len(seconds),
        "skipped": skipped,
        "seconds_per_case": per_case,
        "files": {k: v["label"] for k, v in planned.items()},
        "data": model.data,
    }


@accept_flat_data_keys  # data.spacing=... for data.preprocessing.spacing=... (lightning_brats.data.data_config)
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
@reports_bad_input
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    predict(cfg)


if __name__ == "__main__":
    main()
