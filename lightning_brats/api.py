"""The Python API: what ``train.py``, ``predict.py`` and ``eval.py`` do, from a notebook or a script.

In Jupyter ``sys.argv`` is the kernel's and ``@hydra.main`` cannot be used, so the configs are
composed with Hydra's compose API (the package's own configs: the checkout's ``conf/`` or the
installed ``lightning_brats.conf``) and each run gets the folder, the saved configs (``.hydra/``)
and the log file a command line gives it::

    from lightning_brats import api

    result = api.train(["experiment=brats_cpu", "data.root=/data/BraTS2020", "trainer.max_time=00:00:05:00"])
    result.run_dir, result.best_checkpoint, result.metrics["val/dice_mean"]
    labels = api.predict(result.best_checkpoint, input="/data/BraTS2020/BraTS20_Training_001")
    table = api.evaluate(["predictions=/tmp/preds", "ground_truth=/data/BraTS2020", "data=brats20"])
    api.show(labels, "BraTS20_Training_001")

The command lines call the same functions (``train.py`` -> :func:`train`), so both paths are one.
Errors are the command lines' one-line errors as exceptions (``DataError``, ``CheckpointError``,
``OutOfDeviceMemory`` ...), never a ``SystemExit``.
"""

from __future__ import annotations

import logging
import logging.config
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_brats.configs import CONFIG_DIR, FROM_CHECKOUT
from lightning_brats.data.data_config import upgrade_overrides

log = logging.getLogger(__name__)

Overrides = Sequence[str]


def compose(overrides: Overrides = (), config_name: str = "train") -> DictConfig:
    """The config a command line would run: ``config_name`` (``train``, ``predict``, ``eval``,
    ``export``, ...) composed with ``overrides`` (``["experiment=brats_cpu", "data.root=..."]``), with
    its ``hydra`` node (run folder, logging), as Hydra's compose API gives it. The flat ``data`` keys the
    commands accept (``data.spacing=...`` for ``data.preprocessing.spacing=...``) are accepted here too
    (:func:`~lightning_brats.data.data_config.upgrade_overrides`).

    Raises:
        hydra.errors.ConfigCompositionException: an unknown group option or key (Hydra's message).
    """
    GlobalHydra.instance().clear()
    if FROM_CHECKOUT:
        context = initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name=config_name)
    else:
        context = initialize_config_module("lightning_brats.conf", version_base="1.3", job_name=config_name)
    with context:
        return hydra_compose(config_name, overrides=upgrade_overrides(overrides), return_hydra_config=True)


def _as_config(cfg_or_overrides: DictConfig | Overrides, config_name: str) -> DictConfig:
    if isinstance(cfg_or_overrides, DictConfig):
        return cfg_or_overrides
    if isinstance(cfg_or_overrides, str):
        raise TypeError(f"give overrides as a list of strings, e.g. [{cfg_or_overrides!r}]")
    return compose(cfg_or_overrides, config_name)


class _RunFolder:
    """A composed config's run as ``@hydra.main`` sets it up: the folder ``hydra.run.dir`` (made, and
    ``paths.output_dir`` pointing at it), ``.hydra/{config,hydra,overrides}.yaml`` in it, Hydra's job
    logging (console and ``<task_name>.log`` there) and :class:`HydraConfig` for the code that reads it;
    the job's config (without ``hydra``) is :attr:`cfg`. A config without a ``hydra`` node (inside
    ``@hydra.main``) is used as it is."""

    def __init__(self, cfg: DictConfig) -> None:
        self.full = cfg
        self.cfg = cfg
        self.dir: Path | None = None

    def __enter__(self) -> typing.Self:
        if "hydra" not in self.full:
            return self
        full = self.full.copy()
        run_dir = Path(str(OmegaConf.select(full, "hydra.run.dir"))).resolve()  # ${now:...} resolved once
        with open_dict(full):
            full.hydra.run.dir = str(run_dir)
            full.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(full)
        run_dir.mkdir(parents=True, exist_ok=True)
        job = full.copy()
        with open_dict(job):
            del job["hydra"]
        hydra_dir = run_dir / str(full.hydra.output_subdir or ".hydra")
        hydra_dir.mkdir(exist_ok=True)
        OmegaConf.save(job, hydra_dir / "config.yaml")
        OmegaConf.save(full.hydra, hydra_dir / "hydra.yaml")
        OmegaConf.save(OmegaConf.create(list(full.hydra.overrides.task)), hydra_dir / "overrides.yaml")
        logging_config = OmegaConf.to_container(full.hydra.job_logging, resolve=True)
        if logging_config:
            logging.config.dictConfig(logging_config)
        self.cfg, self.dir = job, run_dir
        return self

    def __exit__(self, *exc) -> None:
        for handler in list(logging.getLogger().handlers):
            if isinstance(handler, logging.FileHandler) and self.dir is not None and Path(handler.baseFilename).parent == self.dir:
                handler.close()
                logging.getLogger().removeHandler(handler)


@dataclass
class TrainResult:
    """What a training run left.

    Attributes:
        run_dir: the run folder (checkpoints, ``csv/``, ``curves.png``, ``model_card.md``, the log).
        best_checkpoint: the best checkpoint's path (``val/dice_mean``, or the lesion-wise mean), or
            ``None`` (no validation ran); ``last.ckpt`` is beside it.
        metrics: the final callback metrics as floats (``val/dice_wt``, ``val/dice_mean``, ...).
        module: the trained :class:`~lightning_brats.training.module.SegmentationModule` (last weights).
        datamodule: the datamodule it trained on.
    """

    run_dir: Path
    best_checkpoint: Path | None
    metrics: dict[str, float]
    module: Any = field(repr=False)
    datamodule: Any = field(repr=False)


def train(cfg_or_overrides: DictConfig | Overrides = ()) -> TrainResult:
    """Train as ``python train.py <overrides>`` does, in this process.

    Args:
        cfg_or_overrides: overrides (``["experiment=brats_cpu", "data.root=..."]``), or a config from
            :func:`compose` (edit it first if you like), or (inside ``@hydra.main``) the job's config.

    Raises:
        as :func:`lightning_brats.cli.train.train`: ``DataError`` (a bad ``data.root``),
        ``FileNotFoundError`` (``ckpt_path``), ``OutOfDeviceMemory``, ``RuntimeError`` (no checkpoint written).
    """
    from lightning_brats.cli.train import run_training

    with _RunFolder(_as_config(cfg_or_overrides, "train")) as run:
        return run_training(run.cfg)


@dataclass
class PredictResult:
    """Predictions of :func:`predict`.

    Attributes:
        cases: case ID -> :class:`~lightning_brats.inference.prediction.CasePrediction` (``label (X, Y, Z)`` uint8
            with the release's codes, ``probabilities``, the input ``case``) when predicted in memory;
            empty when written to files.
        files: case ID -> the written label map (``output_dir`` given).
        seconds_per_case: mean wall time per predicted case.
        data: the model's data config (``data["release"]``: layout, ``labels``, ``regions``, ...;
            ``data["preprocessing"]``: ``modalities``, spacing, ...).
    """

    cases: dict[str, Any]
    files: dict[str, Path]
    seconds_per_case: float
    data: dict = field(default_factory=dict, repr=False)

    def __getitem__(self, case_id: str):
        return self.cases[case_id]

    def show(self, case_id: str, truth=None, modality: str | None = None):
        """:func:`show` for one of these cases."""
        return show(self, case_id, truth, modality)


def predict(checkpoint: str | Path | Sequence[str | Path] | None = None, input: str | Path | None = None,
            output_dir: str | Path | None = None, overrides: Overrides = ()) -> PredictResult:
    """Segment cases as ``predict.py`` does: in memory (``output_dir=None``) or into NIfTI files.

    Args:
        checkpoint: a ``.ckpt`` (several: an ensemble); or give ``ckpt_path=``/``run_dir=`` in ``overrides``.
        input: a dataset root or one case folder; or ``files={...}`` in ``overrides``.
        output_dir: where ``predict.py`` writes ``<case>.nii.gz`` (``None``: nothing is written).
        overrides: more ``predict.yaml`` overrides (``inference.flip_tta=false``, ``data=brats23``, ...).

    Raises:
        as ``predict.py``: ``FileNotFoundError``/``CheckpointError`` (the checkpoint), ``DataError``
        (the input), ``OutOfDeviceMemory``.
    """
    from lightning_brats.cli.predict import build_predictor, find_input_cases
    from lightning_brats.cli.predict import predict as predict_files

    extra = list(overrides)
    if checkpoint is not None:
        paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
        extra.append(f"ckpt_path=[{','.join(str(Path(p).resolve()) for p in paths)}]")
    if input is not None:
        extra.append(f"input={Path(input).resolve()}")
    if output_dir is not None:
        extra.append(f"output_dir={Path(output_dir).resolve()}")
        with _RunFolder(compose(extra, "predict")) as run:
            written = predict_files(run.cfg)
        return PredictResult({}, dict(written["files"]), written["seconds_per_case"], _plain(written["data"]))
    with _RunFolder(compose(extra, "predict")) as run:
        predictor = build_predictor(run.cfg)
        cases = {files.case_id: predictor.predict_case(files) for files in find_input_cases(run.cfg, predictor.model)}
    seconds = [c.seconds for c in cases.values()]
    return PredictResult(cases, {}, sum(seconds) / len(seconds) if seconds else 0.0, _plain(predictor.model.data))


def evaluate(cfg_or_overrides: DictConfig | Overrides = ()):
    """Score predictions as ``eval.py`` does (it also writes its folder: CSVs, report, pictures).

    Args:
        cfg_or_overrides: ``eval.yaml`` overrides (``["predictions=...", "ground_truth=...", "data=brats20"]``,
            or ``ckpt_path=...`` to predict first), or a composed config.

    Returns:
        a ``pandas.DataFrame`` of the per-case metrics (one row per case, as eval.py's ``metrics.csv``),
        with ``.attrs["summary"]`` (the summary rows) and ``.attrs["output_dir"]``.

    Raises:
        as ``eval.py``: ``DataError`` (the data or predictions), ``CheckpointError``, ``ValueError``.
    """
    import pandas as pd

    from lightning_brats.cli.eval import evaluate as run_eval

    with _RunFolder(_as_config(cfg_or_overrides, "eval")) as run:
        result = run_eval(run.cfg)
    table = pd.DataFrame(result["rows"])
    table.attrs.update(summary=result["summary"], output_dir=result["output_dir"])
    return table


def show(result: PredictResult, case_id: str, truth=None, modality: str | None = None):
    """A figure of one case predicted in memory: axial, coronal and sagittal slices through the tumour
    centre, ground truth (when given) beside the prediction, over one modality.

    Args:
        result: from :func:`predict` (``output_dir=None``).
        case_id: which case.
        truth: ``(X, Y, Z)`` label map on the case's grid, or its NIfTI path, or ``None``.
        modality: the modality underneath (default: the ``display.modality`` order, T1ce then FLAIR).

    Returns:
        a matplotlib ``Figure`` (Jupyter shows it inline).

    Raises:
        KeyError: ``case_id`` was not predicted in memory (the message lists those that were).
    """
    import numpy as np

    from lightning_brats.data.labels import nested_region_codes
    from lightning_brats.evaluation.visualize import case_figure

    if case_id not in result.cases:
        raise KeyError(f"{case_id!r} was not predicted in memory; predicted: {sorted(result.cases)}")
    prediction, data = result.cases[case_id], result.data
    modalities = list(data["preprocessing"]["modalities"])
    wanted = [m for m in ([modality] if modality else ["t1ce", "flair"]) if m in modalities]
    channel = modalities.index(wanted[0]) if wanted else 0
    if truth is not None and not isinstance(truth, np.ndarray):
        import nibabel as nib

        truth = np.asarray(nib.load(str(truth)).dataobj)
    nesting = [code for _, code in nested_region_codes(data["release"]["regions"])]
    return case_figure(prediction.case.image[channel], truth, prediction.label, data["release"]["labels"], nesting,
                       title=case_id, background_name=modalities[channel])


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


__all__ = ["PredictResult", "TrainResult", "compose", "evaluate", "predict", "show", "train"]
