"""Send pictures, files and summary fields to every logger that can hold them.

Lightning's loggers share ``log_metrics`` and ``log_hyperparams`` but not images or files; each
function here dispatches on the logger's kind and skips the ones that cannot hold the thing
(``CSVLogger``, Lightning's ``DummyLogger`` under ``fast_dev_run``). What goes where:

============  ==========================  ==============================  ===========================
logger        picture                     file                            summary fields
============  ==========================  ==============================  ===========================
W&B           ``log_image`` (history)     ``run.save`` (run files)        ``run.summary``
TensorBoard   ``add_image`` (HWC)         PNG: ``add_image``;             hyperparameters
                                          text: ``add_text``
MLflow        ``log_image`` (images/)     ``log_artifact``                hyperparameters (params)
CSV           -                           -                               ``hparams.yaml``
============  ==========================  ==============================  ===========================

Every function returns the class names of the loggers that took the item (for tests and logs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _kind(logger) -> str:
    """``"wandb"``, ``"tensorboard"``, ``"mlflow"`` or ``"other"`` (by class, without importing optional packages)."""
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    if isinstance(logger, WandbLogger):
        return "wandb"
    if isinstance(logger, TensorBoardLogger):
        return "tensorboard"
    if isinstance(logger, MLFlowLogger):
        return "mlflow"
    return "other"


def log_picture(loggers: Iterable, key: str, image: np.ndarray, step: int, caption: str = "") -> list[str]:
    """Log one RGB picture to every logger that holds images.

    Args:
        loggers: Lightning loggers (``trainer.loggers``).
        key: the picture's name, e.g. ``"val/case_BraTS20_Training_001"``.
        image: ``(H, W, 3)`` uint8 RGB.
        step: the global step it belongs to.
        caption: shown under the picture where the logger has captions (W&B).

    Raises:
        ValueError: ``image`` is not ``(H, W, 3)`` uint8.
    """
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"log_picture({key!r}): expected an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
    took = []
    for lg in loggers:
        kind = _kind(lg)
        if kind == "wandb":
            lg.log_image(key=key, images=[image], caption=[caption or key], step=step)
        elif kind == "tensorboard":
            lg.experiment.add_image(key, image, global_step=step, dataformats="HWC")
            lg.experiment.flush()
        elif kind == "mlflow":
            lg.experiment.log_image(lg.run_id, image, key=key, step=step)
        else:
            continue
        took.append(type(lg).__name__)
    return took


def log_file(loggers: Iterable, path: str | Path, step: int = 0) -> list[str]:
    """Attach a file of the run folder (``curves.png``, ``model_card.md``) to every logger that holds files.

    TensorBoard has no files: a PNG goes in as an image, a text file (``.md``, ``.txt``, ``.csv``)
    as text, under the file's name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log_file: {path} does not exist")
    took = []
    for lg in loggers:
        kind = _kind(lg)
        if kind == "wandb":
            lg.experiment.save(str(path), base_path=str(path.parent), policy="now")
        elif kind == "mlflow":
            lg.experiment.log_artifact(lg.run_id, str(path))
        elif kind == "tensorboard" and path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as picture:
                lg.experiment.add_image(path.name, np.asarray(picture.convert("RGB")), global_step=step, dataformats="HWC")
            lg.experiment.flush()
        elif kind == "tensorboard" and path.suffix.lower() in (".md", ".txt", ".csv"):
            lg.experiment.add_text(path.name, path.read_text(), global_step=step)
            lg.experiment.flush()
        else:
            continue
        took.append(type(lg).__name__)
    return took


def log_summary(loggers: Iterable, fields: Mapping[str, object]) -> list[str]:
    """Record flat ``{name: str | int | float}`` fields as run-level facts: W&B's summary and every
    logger's hyperparameters (MLflow params, TensorBoard hparams, the CSV logger's ``hparams.yaml``).

    MLflow refuses to change a param once logged, so log each field once per run.
    """
    took = []
    for lg in loggers:
        if type(lg).__name__ == "DummyLogger":
            continue
        if _kind(lg) == "wandb":
            lg.experiment.summary.update(dict(fields))
        lg.log_hyperparams(dict(fields))
        lg.save()  # CSV: rewrite hparams.yaml (also after the logger was finalised at the end of fit)
        if _kind(lg) == "tensorboard":
            lg.experiment.flush()
        took.append(type(lg).__name__)
    return took
