"""``python train.py`` / ``lightning-brats-train``: compose the config, build everything, fit.

Follows lightning-hydra-template's ``src/train.py``: every object is built with
``hydra.utils.instantiate`` from its ``_target_``; ``main`` returns the value of
``optimized_metric`` so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

import lightning_brats  # noqa: F401  (registers the ${len:...} resolver)

log = logging.getLogger("lightning_brats.train")

#: The repository's ``conf/`` folder (the package is used from a checkout or an editable install).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def _instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a config group that holds named objects (callbacks, loggers)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and validate the best checkpoint) as ``cfg`` says.

    Returns:
        the final callback metrics as floats (``val/dice_wt``, ``val/dice_mean``, ...).

    Raises:
        lightning_brats.data.layouts.DataError: ``data.root`` is missing or holds no cases
            (raised before any training).
    """
    pl.seed_everything(cfg.seed, workers=True)
    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check_root()  # fail before building anything heavy when the data root is wrong
    log.info(f"Instantiating model <{cfg.model._target_}>")
    model = hydra.utils.instantiate(cfg.model)
    model.configure_for(datamodule.region_names, datamodule.patch_size, datamodule.modalities)
    resolved = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }
    model.run_config = {"data": resolved["data"], "model": resolved["model"]}
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in trainer.loggers:
        lg.log_hyperparams(resolved)
    try:
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        if trainer.is_global_zero and datamodule.splits_path.exists():
            shutil.copy(datamodule.splits_path, Path(cfg.paths.output_dir) / "splits.json")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if cfg.get("validate_best") and best:
            log.info(f"Validating the best checkpoint {best}")
            results = trainer.validate(model=model, datamodule=datamodule, ckpt_path=best, verbose=False)
            metrics.update({k: float(v) for k, v in results[0].items()})
            metrics["best_model_path"] = best
    finally:
        _finish_wandb(trainer)
    log.info("Final metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    log.info(f"Run folder: {cfg.paths.output_dir}")
    return metrics


def _finish_wandb(trainer: pl.Trainer) -> None:
    """Close the W&B run so a multirun's next job starts a new one (as lightning-hydra-template)."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
    return metrics[name]


if __name__ == "__main__":
    main()
