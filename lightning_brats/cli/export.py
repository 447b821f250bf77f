"""``lightning-brats export ckpt_path=... format=onnx|torchscript``: a checkpoint's network as a deployable file.

Writes the network and its preprocessing metadata (JSON beside it, and inside the file) and
checks that the file reproduces the checkpoint's logits; ``predict.py exported=<file>`` then
segments with it. See ``conf/export.yaml`` and :mod:`lightning_brats.inference.export`.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import lightning_brats  # noqa: F401  (registers resolvers)
from lightning_brats.cli.train import CONFIG_DIR

log = logging.getLogger("lightning_brats.inference.export")


def export(cfg: DictConfig):
    """Export ``cfg.ckpt_path`` as ``cfg.format``; returns ``(path, metadata)`` (see
    :func:`~lightning_brats.inference.export.export_model` for the errors)."""
    from lightning_brats.inference.export import export_model

    return export_model(
        cfg.ckpt_path,
        fmt=cfg.format,
        output=cfg.get("output"),
        dynamic=bool(cfg.dynamic),
        opset=int(cfg.opset),
        exporter=cfg.exporter,
        tolerance=float(cfg.tolerance),
        inference=cfg.get("inference"),
        overwrite=bool(cfg.overwrite),
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    path, metadata = export(cfg)
    checks = ", ".join(f"{c['size']}: {c['max_abs_diff']:.1e}" for c in metadata["verified"])
    log.info(f"{path}: logits match the checkpoint's (max |difference| per size {checks})")


if __name__ == "__main__":
    main()
