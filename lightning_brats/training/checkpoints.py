"""Checkpoints: what lightning-brats adds to Lightning's, one loader that validates, one atomic writer.

The schema, defined here and nowhere else: a checkpoint is Lightning's dict (``state_dict``,
``epoch``, ``global_step``, ``hyper_parameters``, optimiser and loop states, callbacks) plus

- ``hyper_parameters``: the arguments of :class:`~lightning_brats.training.module.SegmentationModule`
  as plain values, including the configs of its network, loss, optimiser and scheduler (``net``,
  ``loss``, ...; ``_target_`` dicts), so that ``SegmentationModule.load_from_checkpoint(path)``
  rebuilds it (:func:`module_arguments`);
- :data:`CONFIG_KEY`: the training run's resolved ``data`` and ``model`` config
  (:func:`training_config`): what prediction and evaluation repeat (preprocessing, release,
  fold; see :class:`~lightning_brats.data.settings.PreprocessingSettings`);
- :data:`WANDB_ID_KEY`: the W&B run id, so a resumed run continues it (:func:`wandb_run_id`);
- :data:`SKIPPED_KEY`: training batches skipped for a non-finite loss.

:func:`load_checkpoint` is the only place a checkpoint is read (``train.py ckpt_path=``,
``predict.py``, ``eval.py``, ``SegmentationModule.load_from_checkpoint`` and Lightning's own
restore through :class:`AtomicCheckpointIO`).
It always reads with ``torch.load(weights_only=True)``: tensors and plain Python values only,
never arbitrary pickled objects, so a checkpoint cannot run code when it is loaded. A checkpoint
from an untrusted source must never be loaded with ``weights_only=False``.

:class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the target folder,
flushes it to disk and renames it over the final name (``os.replace``), so a process killed
while writing (``kill -9``, out of memory, a node failure) leaves the previous checkpoint
intact and never a truncated file under a final name. Lightning 2.6's own writer
(``lightning_fabric.utilities.cloud_io._atomic_save``) goes through an fsspec transaction whose
temporary file lies in the system temp folder (``tempfile.mkstemp()``); when that is another
file system than the run folder (``/tmp`` on a node's local disk, runs on NFS or Lustre: the
usual cluster setup) the commit is ``shutil.move``, a copy onto the final name, which a kill
leaves truncated.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.cloud_io import get_filesystem

from lightning_brats.data.data_config import upgrade_data_config

#: Key under which a checkpoint carries the run's resolved ``data`` and ``model`` config.
CONFIG_KEY = "lightning_brats_config"

#: Key under which a checkpoint carries the W&B run id, so that a resumed run continues that W&B run.
WANDB_ID_KEY = "lightning_brats_wandb_run_id"

#: Key under which a checkpoint carries how many training batches were skipped for a non-finite loss.
SKIPPED_KEY = "lightning_brats_nonfinite_skipped"

#: Lightning's key for the module's constructor arguments (``LightningModule.CHECKPOINT_HYPER_PARAMS_KEY``).
HPARAMS_KEY = "hyper_parameters"

#: The parts :class:`~lightning_brats.training.module.SegmentationModule` builds from configs: without them in
#: ``hyper_parameters`` (or in the ``model`` config of :data:`CONFIG_KEY`) it cannot be rebuilt.
PART_KEYS = ("net", "loss", "optimizer")

#: Added to every message about a checkpoint that ``weights_only=True`` refused.
UNTRUSTED_NOTE = (
    "checkpoints are read with torch.load(weights_only=True); never load a checkpoint from an untrusted source "
    "with weights_only=False, which can run arbitrary code"
)


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or not a lightning-brats checkpoint; the message names the file."""


def load_checkpoint(
    path: str | os.PathLike, *, mmap: bool = False, map_location: Any = "cpu", require_config: bool = True
) -> dict[str, Any]:
    """Read and validate a checkpoint written by ``train.py``.

    Args:
        path: a local path or an fsspec URL (``s3://...``) of a ``.ckpt``.
        mmap: memory-map the tensors (local files only): cheap when only the stored config or
            the W&B run id is wanted.
        map_location: as for ``torch.load`` (default: every tensor on the CPU).
        require_config: also require the training config lightning-brats stores under
            :data:`CONFIG_KEY` (``False`` accepts any Lightning checkpoint).

    Returns:
        the checkpoint dict (``state_dict``, ``epoch``, ``global_step``, ..., ``lightning_brats_config``).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is empty, truncated or not a PyTorch file; it holds objects that
            ``weights_only=True`` refuses; it is not a dict with a ``state_dict`` (e.g. a plain
            PyTorch state dict); or, with ``require_config``, it lacks lightning-brats' config (a
            checkpoint of another project). The message names the file and, for the first cases,
            quotes torch's own one-line reason.
    """
    path_str = str(path)
    fs = get_filesystem(path_str)
    if not fs.exists(path_str) or fs.isdir(path_str):
        raise FileNotFoundError(f"{path_str}: no such checkpoint file")
    if fs.size(path_str) == 0:
        raise CheckpointError(f"{path_str}: empty file (0 bytes), not a checkpoint; it was probably cut off while written")
    local = Path(path_str).is_file()
    if local and not zipfile.is_zipfile(path_str):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(
            f"{path_str}: not a readable PyTorch checkpoint, the file is truncated or corrupt (not the zip archive "
            f"torch.save writes; {fs.size(path_str)} bytes)"
        )
    try:
        if local:
            checkpoint = torch.load(path_str, map_location=map_location, weights_only=True, mmap=mmap)
        else:
            with fs.open(path_str, "rb") as handle:
                checkpoint = torch.load(handle, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torch's explanation spans lines; the one naming the refused global is the useful one
        reason = next((line for line in lines if line.startswith("WeightsUnpickler error")), lines[0])
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(
                f"{path_str}: holds Python objects other than tensors and plain values, refused "
                f"({reason}); {UNTRUSTED_NOTE}"
            ) from None
        raise CheckpointError(f"{path_str}: not a readable PyTorch checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path_str}: not a readable PyTorch checkpoint, the file is truncated or corrupt ({reason})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path_str}: holds a {type(checkpoint).__name__}, not a checkpoint dict written by train.py")
    if "state_dict" not in checkpoint:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            raise CheckpointError(
                f"{path_str}: a plain PyTorch state dict ({len(checkpoint)} tensors), not a Lightning checkpoint "
                "written by train.py (which also holds the training config); use a .ckpt from a run's checkpoints/ folder"
            )
        raise CheckpointError(
            f"{path_str}: not a Lightning checkpoint (no 'state_dict'; keys: {sorted(map(str, checkpoint))[:8]})"
        )
    if require_config and not checkpoint.get(CONFIG_KEY):
        raise CheckpointError(
            f"{path_str}: not a lightning-brats checkpoint (no '{CONFIG_KEY}' with the training config; e.g. another "
            "project's Lightning checkpoint); use a .ckpt written by this project's train.py"
        )
    return checkpoint


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The temporary file is ``.<name>.tmp-<pid>`` beside ``path`` (same file system, so the rename
    is atomic); it is flushed and ``fsync``-ed before the rename and removed when writing fails.
    A process killed while writing (``kill -9``) leaves that hidden temporary file, never a
    partial file under the final name.

    Raises:
        OSError: the folder is missing or unwritable, or the disk is full; the message names
            ``path`` (the final file is then untouched).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"could not write checkpoint {path}: {exc.strerror or exc}") from exc


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with an atomic local write and a validating read.

    Saving: local paths through :func:`atomic_write_bytes`; other file systems (``s3://``, ...)
    through Lightning's own writer. Loading: :func:`load_checkpoint` (``weights_only=True``,
    a clear error naming the file for a corrupt or foreign checkpoint).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        fs = get_filesystem(path)
        if not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        fs.makedirs(str(Path(path).parent), exist_ok=True)
        atomic_write_bytes(buffer.getvalue(), path)

    def load_checkpoint(
        self, path: Any, map_location: Callable | Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointError(f"{path}: refusing weights_only=False; {UNTRUSTED_NOTE}")
        return load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")


def run_dir_of(ckpt_path: str | os.PathLike) -> Path:
    """The run folder of a checkpoint: the folder above ``checkpoints/`` for the checkpoints Lightning's
    ``ModelCheckpoint`` writes (``<run>/checkpoints/last.ckpt``), else the checkpoint's own folder (SLURM's
    ``<run>/hpc_ckpt_<n>.ckpt``, or a checkpoint copied elsewhere with its run's files beside it).

    The one rule for finding a run's ``splits.json``, model card and ``postprocessing.yaml`` from a checkpoint.
    """
    path = Path(ckpt_path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def training_config(checkpoint: Mapping, path: str | os.PathLike = "checkpoint") -> dict:
    """The training run's resolved config a checkpoint carries: ``{"data": {...}, "model": {...}}``, its
    ``data`` in the current shape (``release``, ``preprocessing`` and the datamodule's arguments): a
    checkpoint written while the ``data`` config was flat is mapped here, the one place every reader of
    a checkpoint's config goes through (:func:`~lightning_brats.data.data_config.upgrade_data_config`).

    Raises:
        CheckpointError: the checkpoint has no :data:`CONFIG_KEY` or no ``data`` in it; the
            message names ``path``.
    """
    stored = checkpoint.get(CONFIG_KEY)
    if not stored or not isinstance(stored.get("data"), Mapping):
        raise CheckpointError(
            f"{path}: holds no training config ('{CONFIG_KEY}' with 'data'); use a .ckpt written by this project's train.py"
        )
    return {**stored, "data": upgrade_data_config(stored["data"])}


def wandb_run_id(checkpoint: Mapping) -> str | None:
    """The W&B run id a checkpoint carries (:data:`WANDB_ID_KEY`), or ``None``."""
    run_id = checkpoint.get(WANDB_ID_KEY)
    return str(run_id) if run_id else None


def trained_channels(checkpoint: Mapping) -> dict | None:
    """``{"modalities": [...], "regions": [...], "context_slices": k}`` a checkpoint's network was trained for
    (from its training config, else its hyper-parameters; ``k`` 0 where not recorded), or ``None`` when it
    records neither."""
    data = (checkpoint.get(CONFIG_KEY) or {}).get("data")
    if isinstance(data, Mapping):
        data = upgrade_data_config(data)
        release, plan = data.get("release") or {}, data.get("preprocessing") or {}
        if "modalities" in plan and "regions" in release:
            return {"modalities": list(plan["modalities"]), "regions": list(release["regions"]),
                    "context_slices": int(data.get("context_slices") or 0)}
    source = checkpoint.get(HPARAMS_KEY)
    if isinstance(source, Mapping) and "modalities" in source and "regions" in source:
        return {"modalities": list(source["modalities"]), "regions": list(source["regions"]),
                "context_slices": int(source.get("context_slices") or 0)}
    return None


def check_same_channels(trained: Mapping, wanted: Mapping) -> None:
    """Check that a network trained with data config ``trained`` suits data config ``wanted``.

    Channels are compared by name and order: the modalities are the inputs (times ``2k + 1`` neighbouring
    slices with ``context_slices = k``, which must match too), the region names the outputs. The regions' label codes may differ (a BraTS 2020 model predicts the same WT,
    TC and ET on BraTS 2023 files, whose ET code is 3, not 4).

    Args:
        trained: the channels the checkpoint's network was trained for, ``{"modalities": [...], "regions":
            ..., "context_slices": k}`` (regions: a mapping name -> codes or a list of names; ``context_slices``,
            0 when absent; :func:`trained_channels`).
        wanted: the channels of the current ``data`` config (same keys).

    Raises:
        ValueError: the modalities or context slices (input channels) or the region names (output channels)
            differ; the message says which and how.
    """
    problems = []
    if list(trained["modalities"]) != list(wanted["modalities"]):
        problems.append(
            f"input channels: trained on data.preprocessing.modalities={list(trained['modalities'])} "
            f"({len(trained['modalities'])} channels), this run has {list(wanted['modalities'])} ({len(wanted['modalities'])})"
        )
    trained_k, wanted_k = int(trained.get("context_slices") or 0), int(wanted.get("context_slices") or 0)
    if trained_k != wanted_k:
        problems.append(
            f"input channels: trained with data.context_slices={trained_k} ({2 * trained_k + 1} slices per modality), "
            f"this run has data.context_slices={wanted_k}"
        )
    if list(trained["regions"]) != list(wanted["regions"]):
        problems.append(
            f"output channels: trained for the regions {list(trained['regions'])} of data.release.regions "
            f"({len(trained['regions'])} outputs), this run has {list(wanted['regions'])} ({len(wanted['regions'])})"
        )
    if problems:
        raise ValueError("the checkpoint does not fit this model: " + "; ".join(problems))


def module_arguments(
    checkpoint: Mapping, path: str | os.PathLike = "checkpoint", given: Mapping | None = None
) -> dict[str, Any]:
    """The constructor arguments of :class:`~lightning_brats.training.module.SegmentationModule` a checkpoint holds.

    A checkpoint of this version keeps all of them in ``hyper_parameters``. One written before the
    module took its data settings and part configs as arguments (lightning-brats before the
    ``load_from_checkpoint`` redesign) keeps only the plain settings there; the rest is taken from
    its training config (:data:`CONFIG_KEY`): the parts from its ``model`` config, the regions,
    modalities, patch size, sampling and batch size from its ``data`` config.

    Args:
        checkpoint: the checkpoint dict (:func:`load_checkpoint`).
        path: the file, for messages.
        given: arguments the caller passes itself (they count as present).

    Returns:
        keyword arguments (plain values; the parts as ``_target_`` configs).

    Raises:
        CheckpointError: neither place holds the configs to rebuild the network, loss and
            optimiser, or the data settings; the message names ``path`` and what is missing.
    """
    arguments = dict(checkpoint.get(HPARAMS_KEY) or {})
    stored = checkpoint.get(CONFIG_KEY) or {}
    model, data = stored.get("model") or {}, upgrade_data_config(stored.get("data") or {})
    data = {**data, "regions": (data.get("release") or {}).get("regions"),
            "modalities": (data.get("preprocessing") or {}).get("modalities")}
    for key in (*PART_KEYS, "scheduler", "inference", "name", "num_val_images", "display_modality", "compile",
                "skip_nonfinite"):
        if key not in arguments and key in model:
            arguments[key] = model[key]
    for key in ("regions", "modalities", "patch_size", "sampling", "context_slices", "batch_size"):
        if key not in arguments and key in data:
            arguments[key] = data[key]
    given = given or {}
    required = (*PART_KEYS, "inference", "regions", "modalities", "patch_size")
    missing = [k for k in required if arguments.get(k) is None and given.get(k) is None]
    if missing:
        raise CheckpointError(
            f"{path}: cannot rebuild the module, the checkpoint holds no {missing} (neither in '{HPARAMS_KEY}' nor in "
            f"the training config '{CONFIG_KEY}'); a module built from Python objects rather than configs saves no "
            "configs for them: pass them to load_from_checkpoint (e.g. net=..., loss=...), or use a .ckpt written by train.py"
        )
    return arguments
