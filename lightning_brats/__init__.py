"""lightning-brats: brain-tumour segmentation experiments on multimodal MRI.

The package follows the pipeline, one subpackage per stage; data flows down the first column and
back out through inference and evaluation::

    cli/            train, predict, eval, compare, summarize, export, ...   may import every stage
    api.py          the same from Python and notebooks (compose, train, predict, evaluate, show)
    inference/      checkpoint or exported file + case -> label map on the original grid (NIfTI)
    evaluation/     label maps -> metrics.csv, summary.csv, report.html, comparisons, pictures
    training/       samples -> checkpoints, logs, model card (module, losses, schedules, callbacks)
    data/           release on disk -> preprocessed cache -> samples (readers, labels, datamodule)
    models/         the network zoo (U-Net family, MONAI networks)
    io.py           atomic writes, CSV, multirun job folders (imports nothing of ours)

Each stage imports only the ones below it, with these named exceptions: training validates with
``inference.sliding_window`` and scores with ``evaluation.metrics``/``lesion_metrics``/``visualize``;
inference loads checkpoints through ``training.module``/``training.checkpoints`` and asks
``training.hardware`` for the precision; validation's Dice is ``evaluation.registry``'s. Only the
entry points (``cli``, ``api``) import ``cli``: the commands run the API's code path and back.
``tests/test_architecture.py`` holds the table of allowed edges and checks it, and that no modules
import each other in a circle. The modules' old flat paths (``lightning_brats.module``,
``lightning_brats.budget``, ``lightning_brats.callbacks``, ...) still import, with a
``DeprecationWarning`` naming the new one (:mod:`lightning_brats._moved`, installed below).

Importing the package registers the OmegaConf resolvers the configs in ``conf/`` use:

- ``${input_channels:${data.preprocessing.modalities},${data.context_slices}}``: a network's input channels,
  the modalities times ``2k + 1`` with ``k`` neighbouring slices on each side (:func:`input_channels`);
- ``${len:${data.release.regions}}`` (outputs);
- ``${sweep_group:${task_name}}``: the W&B group shared by the jobs of one multirun (``-m``),
  ``"<task_name>-<sweep folder name>"``, e.g. ``train-2026-01-31_12-00-00``; ``""`` (no group)
  for a single run or when no Hydra app is running (the compose API without Hydra's config);
- ``${override_tags:${tags}}``: ``tags`` followed by the job's command-line overrides
  (``hydra.overrides.task``, e.g. ``model=unet2d``, ``data.fold=1``), duplicates dropped and
  overrides longer than W&B's 64-character tag limit (mostly paths) left out;
- ``${if_else:${data.release.evaluation.lesionwise_validation},val/lesionwise_dice_mean,val/dice_mean}``: the
  second value when the first is true, else the third (the checkpoint's monitor follows a data setting);
It also offers Hydra the config node ``data/augment/intensity_defaults`` (the zero defaults of nnU-Net's
intensity probabilities, :class:`lightning_brats.data.intensity_settings.IntensityProbabilities`), which
``conf/data/base/datamodule.yaml`` puts under ``data.augment``. And:

- ``${slurm_count:trainer.devices}``: a trainer count (nodes, GPUs per node) as a positive int for
  the SLURM launcher (conf/hydra/launcher/slurm_multinode.yaml); 1 when the key is not set.
"""

from pathlib import Path

from omegaconf import ListConfig, OmegaConf

from lightning_brats._moved import install as _install_old_paths
from lightning_brats.data.intensity_settings import register_config_defaults as _register_intensity_defaults

__version__ = "0.1.0"

#: W&B refuses tags longer than this (``wandb.init`` raises ``ValueError``).
WANDB_TAG_MAX_CHARS = 64


def input_channels(modalities, context_slices: int = 0) -> int:
    """A network's input channels: modalities x ``(2k + 1)``, with ``k`` neighbouring axial slices on each side
    of a 2D network's slice as extra channels (``data.context_slices``; :mod:`lightning_brats.data.context`,
    which re-exports this: the one definition, here so the configs' resolver can use it).

    Args:
        modalities: their number, or their names (``data.preprocessing.modalities``).
        context_slices: ``k >= 0``.

    Raises:
        ValueError: ``k`` is negative.
    """
    if int(context_slices) < 0:
        raise ValueError(f"data.context_slices={context_slices}: expected a whole number of slices >= 0")
    count = modalities if isinstance(modalities, int) else len(modalities)
    return int(count) * (2 * int(context_slices) + 1)


def _hydra_config():
    """Hydra's config of the running job, or ``None`` outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_group(prefix: str) -> str:
    """``"<prefix>-<sweep folder name>"`` inside a Hydra multirun job, else ``""``."""
    from hydra.types import RunMode

    hydra_cfg = _hydra_config()
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return ""
    return f"{prefix}-{Path(str(hydra_cfg.sweep.dir)).name}"


def override_tags(tags) -> ListConfig:
    """``tags`` plus the job's command-line overrides that fit in a W&B tag (in order, no duplicates).

    A ``ListConfig``, not a list: ``OmegaConf.resolve`` (``--cfg job --resolve``) refuses a plain list.
    """
    hydra_cfg = _hydra_config()
    overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
    out: list[str] = []
    for tag in [*(tags or []), *overrides]:
        tag = str(tag)
        if tag and len(tag) <= WANDB_TAG_MAX_CHARS and tag not in out:
            out.append(tag)
    return OmegaConf.create(out)


def slurm_count(key: str, *, _root_) -> int:
    """The value of ``key`` (e.g. ``trainer.devices``) in the composed config as a positive int.

    Raises:
        ValueError: the value is not a positive whole number (e.g. ``"auto"``); the message
            names the key and the override that fixes it.
    """
    value = OmegaConf.select(_root_, key, default=1)
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ValueError(
            f"hydra/launcher=slurm_multinode sizes the SLURM job from {key}, which is {value!r}: "
            f"pass a number, e.g. {key}=4 (trainer.devices = GPUs per node, trainer.num_nodes = nodes)"
        )
    return int(value)


def if_else(condition: bool, then, otherwise):
    """``then`` when ``condition`` is true, else ``otherwise``.

    Raises:
        TypeError: ``condition`` is not a boolean (a typo such as ``ture`` would silently pick ``otherwise``).
    """
    if not isinstance(condition, bool):
        raise TypeError(f"${{if_else:...}} needs true or false as its first value, got {condition!r}")
    return then if condition else otherwise


def equals(value, other) -> bool:
    """Whether two config values are equal as text (``${equals:${data.fold},all}``: ``data.fold=all``;
    ``3`` and ``"3"`` are equal)."""
    return str(value) == str(other)


if not OmegaConf.has_resolver("len"):
    OmegaConf.register_new_resolver("len", lambda value: len(value))
if not OmegaConf.has_resolver("input_channels"):
    OmegaConf.register_new_resolver("input_channels", input_channels)
if not OmegaConf.has_resolver("sweep_group"):
    OmegaConf.register_new_resolver("sweep_group", sweep_group)
if not OmegaConf.has_resolver("override_tags"):
    OmegaConf.register_new_resolver("override_tags", override_tags)
if not OmegaConf.has_resolver("equals"):
    OmegaConf.register_new_resolver("equals", equals)
if not OmegaConf.has_resolver("if_else"):
    OmegaConf.register_new_resolver("if_else", if_else)
if not OmegaConf.has_resolver("slurm_count"):
    OmegaConf.register_new_resolver("slurm_count", slurm_count)

# data.augment's nnU-Net intensity probabilities default to IntensityProbabilities' (a Hydra config node)
_register_intensity_defaults()

_install_old_paths()  # lightning_brats.module, .budget, .callbacks, ... (see lightning_brats._moved)
