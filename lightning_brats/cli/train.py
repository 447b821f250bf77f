"""``python train.py`` / ``lightning-brats-train``: compose the config, build everything, fit.

Follows lightning-hydra-template's ``src/train.py``: every object is built with
``hydra.utils.instantiate`` from its ``_target_``; ``main`` returns the value of
``optimized_metric`` so Hydra sweepers can optimise it.

Multi-process training (``trainer=ddp``, ``trainer=ddp_cpu``) is Lightning's DDP: with its
default launcher Lightning re-runs this command for ranks 1.. with ``hydra.run.dir`` set to
rank 0's run folder, so a run has one folder. Resuming (``ckpt_path=...``) is Lightning's
checkpoint restore; see :func:`~lightning_brats.training.resume.resolve_ckpt_path` for ``ckpt_path=last``.

What is training rather than command line lives in ``lightning_brats.training``: the checkpoint
search and W&B run resume (:mod:`~lightning_brats.training.resume`), precision and threads
(:mod:`~lightning_brats.training.hardware`), the DDP launch rules (:mod:`~lightning_brats.training.distributed`).
Their names are importable from here as before.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

import lightning_brats  # noqa: F401  (registers the ${len:...} resolver)
from lightning_brats.cli.errors import reports_bad_input
from lightning_brats.training.allocator import describe_allocator
from lightning_brats.training.distributed import check_no_relaunch_in_multirun, log_rank_zero
from lightning_brats.training.hardware import choose_precision_and_threads, out_of_memory
from lightning_brats.training.resume import check_checkpoint_written, continue_wandb_run, resolve_ckpt_path

log = logging.getLogger("lightning_brats.train")

# The configs: the checkout's conf/ or the installed package's (see lightning_brats/configs.py).
from lightning_brats.configs import CONFIG_DIR, CONFIG_PATH  # noqa: F401  (CONFIG_DIR: for tests and tools)
from lightning_brats.data.data_config import accept_flat_data_keys


def _instantiate_dict(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a config group that holds named objects (callbacks, loggers)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def train(cfg: DictConfig) -> dict[str, float]:
    """:func:`run_training`'s final metrics as floats (``val/dice_wt``, ``val/dice_mean``, ...)."""
    return run_training(cfg).metrics


def run_training(cfg: DictConfig):
    """Train (and validate the best checkpoint) as ``cfg`` says.

    ``cfg.ckpt_path`` resumes a run exactly (see :func:`~lightning_brats.training.resume.resolve_ckpt_path`): Lightning restores
    the weights, optimiser, LR scheduler, epoch, global step, callbacks and the datamodule's
    sampler state; the W&B logger continues the checkpoint's W&B run (:func:`~lightning_brats.training.resume.continue_wandb_run`).
    The resumed run writes into its own new run folder.

    Returns:
        a :class:`~lightning_brats.api.TrainResult`: the run folder, the best checkpoint, the final
        callback metrics as floats (``val/dice_wt``, ``val/dice_mean``, ...), the module and the datamodule.

    Raises:
        lightning_brats.data.readers.DataError: ``data.root`` is missing or holds no cases
            (raised before any training).
        FileNotFoundError: ``ckpt_path`` names no checkpoint (see :func:`~lightning_brats.training.resume.resolve_ckpt_path`).
        ValueError: DDP that re-runs the command line inside a Hydra multirun
            (see :func:`~lightning_brats.training.distributed.check_no_relaunch_in_multirun`).
        RuntimeError: training ended without writing a checkpoint (see :func:`~lightning_brats.training.resume.check_checkpoint_written`).
    """
    pl.seed_everything(cfg.seed, workers=True)
    choose_precision_and_threads(cfg)
    log_rank_zero(log, logging.INFO, describe_allocator())  # tcmalloc/jemalloc preloaded, or the LD_PRELOAD to use
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path:
        log_rank_zero(log, logging.INFO, f"Resuming from {ckpt_path}")
    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check_root()  # fail before building anything heavy when the data root is wrong
    resolved = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in cfg.items()
        if key != "hydra"
    }
    log.info(f"Instantiating model <{cfg.model._target_}>")
    # the data settings come by interpolation (conf/model/unet3d.yaml); the resolved config travels in its checkpoints
    model = hydra.utils.instantiate(cfg.model, run_config={"data": resolved["data"], "model": resolved["model"]})
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    continue_wandb_run(cfg, ckpt_path)
    loggers = _instantiate_dict(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    check_no_relaunch_in_multirun(trainer)
    for lg in trainer.loggers:
        lg.log_hyperparams(resolved)
    try:
        try:
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
        except torch.OutOfMemoryError as exc:
            raise out_of_memory(
                "training",
                {"data.patch_size": list(cfg.data.patch_size), "data.batch_size": cfg.data.batch_size,
                 "trainer.precision": cfg.trainer.precision, "inference.sw_batch_size (validation)": cfg.inference.sw_batch_size},
                "data.batch_size, data.patch_size or inference.sw_batch_size, or train in bf16-mixed/16-mixed",
                trainer.strategy.root_device,
            ) from exc
        if trainer.is_global_zero and datamodule.splits_path.exists():
            shutil.copy(datamodule.splits_path, Path(cfg.paths.output_dir) / "splits.json")
        check_checkpoint_written(trainer)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if cfg.get("validate_best") and best:
            log.info(f"Validating the best checkpoint {best}")
            results = trainer.validate(model=model, datamodule=datamodule, ckpt_path=best, verbose=False)
            metrics.update({k: float(v) for k, v in results[0].items()})
            metrics["best_model_path"] = best
    finally:
        _finish_wandb(trainer)
    if trainer.is_global_zero:
        log.info("Final metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        log.info(f"Run folder: {cfg.paths.output_dir}")
    from lightning_brats.api import TrainResult

    return TrainResult(Path(cfg.paths.output_dir), Path(best) if best else None, metrics, model, datamodule)


def _finish_wandb(trainer: pl.Trainer) -> None:
    """Close the W&B run so a multirun's next job starts a new one (as lightning-hydra-template)."""
    from pytorch_lightning.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()


@accept_flat_data_keys  # data.spacing=... for data.preprocessing.spacing=... (lightning_brats.data.data_config)
@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@reports_bad_input
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``cfg.optimized_metric`` for sweepers."""
    from lightning_brats import api

    metrics = api.train(cfg).metrics  # the Python API's code path: Hydra has set up the run folder
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}")
    return metrics[name]


if __name__ == "__main__":
    main()
