"""A checkpoint's network as a deployable file (ONNX or TorchScript) with its preprocessing metadata.

The exported network maps ``(N, C, *spatial)`` images to ``(N, R, *spatial)`` logits, exactly
as the checkpoint's network does; whatever segments with it must repeat the rest of the
pipeline: the preprocessing (crop, normalisation, spacing), the Gaussian sliding window over
patches of ``patch_size``, the sigmoid per region, flip TTA, the threshold and the nesting of
regions into label codes. Everything that needs is written with the network as metadata
(:func:`export_metadata`): a JSON file beside it (``<file>.json``), and inside the file (ONNX
``metadata_props``, one JSON-encoded value per key; a ``lightning_brats.json`` extra file in
TorchScript), so that ``predict.py exported=<file>`` segments like the checkpoint with no
checkpoint and no training config (:func:`load_exported_model`).

Exporters, with torch 2.13 on every ``model=`` variant (tests/test_export.py): the
TorchScript-based ONNX exporter (``exporter=legacy``, the default here) exports each
convolutional variant (our U-Nets, MONAI's SegResNet) with dynamic batch and spatial axes,
and onnxruntime reproduces the logits to ~1e-5. The ``torch.export``-based one
(``exporter=dynamo``, torch's default since 2.9) gives the same graphs and accuracy but is
an order of magnitude slower to export (README's Export section). Neither makes
MONAI's SwinUNETR size-independent: its shifted-window attention mask is computed for the
traced size, so onnxruntime fails at another size; SwinUNETR exports with ``dynamic=false``
(the patch size only, which is all the sliding window feeds it). TorchScript files are made
with ``torch.jit.trace`` (deprecated in torch 2.13 but still what libtorch servers load).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_brats.data.context import channel_names
from lightning_brats.data.data_config import MOVED_KEYS, PARTS, upgrade_data_config
from lightning_brats.data.normalization import NORMALIZATIONS
from lightning_brats.inference.prediction import (
    WINDOW_KEYS,
    TrainedModel,
    load_trained_model,
    resolve_device,
    with_release,
)
from lightning_brats.io import atomic_save

log = logging.getLogger(__name__)

#: ``format=`` -> file extension.
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}

#: Name of the metadata inside a TorchScript file (``torch.jit.save(_extra_files=...)``).
TORCHSCRIPT_METADATA = "lightning_brats.json"

#: Bump when the metadata's meaning changes.
METADATA_VERSION = 1


class ExportError(RuntimeError):
    """A network could not be exported, or the exported file does not reproduce it; the message says why."""


def sidecar_path(path: Path) -> Path:
    """The JSON metadata written beside an exported file: ``model.onnx`` -> ``model.onnx.json``."""
    return path.with_name(path.name + ".json")


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def export_metadata(model: TrainedModel, fmt: str, dynamic: bool, inference: Mapping | None = None, **extra) -> dict:
    """Everything a deployment needs besides the network's weights, as JSON-ready values.

    Args:
        model: the checkpoint's model (its ``data`` config gives the release, the preprocessing plan and
            the :data:`~lightning_brats.inference.prediction.WINDOW_KEYS`).
        fmt: ``"onnx"`` or ``"torchscript"``.
        dynamic: whether the file takes any spatial size (multiples of ``divisor``) or only ``patch_size``.
        inference: the recommended inference settings (``conf/inference``): threshold, overlap,
            flip TTA, post-processing; recorded, not enforced.
        extra: more keys (e.g. exporter and opset).

    Returns:
        a flat dict (the file format keeps the keys of the flat ``data`` config it was defined with): the
        preprocessing plan's fields (``modalities``, ``spacing`` in mm or ``None`` for the original grid,
        ``normalization``, ``crop``, ``crop_size``), the release's but its evaluation (``layout``, ``labels``
        name -> code, ``regions`` name -> label codes, ``postprocess``), ``patch_size`` in voxels,
        ``sampling``, ``context_slices`` (2.5D: the input holds ``2k + 1`` slices per modality, named in
        ``input.channels``), and
        ``spatial_dims``, ``input``/``output`` descriptions, ``threshold``, ``inference``, ...
    """
    # the scoring definition (release.evaluation) is eval.py's, not the deployment's: left out, as always
    data = {k: _plain(v) for part in PARTS for k, v in model.data[part].items() if k != "evaluation"}
    data.update({k: _plain(model.data[k]) for k in WINDOW_KEYS if k in model.data})
    dims = len(model.patch_size)
    axes = ["N", "C", "X", "Y", "Z"][: 2 + dims]
    inference = dict(_plain(inference) or {})
    normalization = data.get("normalization", "zscore")
    describe = NORMALIZATIONS.get(normalization)
    return {
        "metadata_version": METADATA_VERSION,
        "format": fmt,
        "model": getattr(model.net, "description", type(model.net).__name__),
        "source_checkpoint": str(model.checkpoint),
        "spatial_dims": dims,
        "dynamic_spatial": bool(dynamic),
        "divisor": int(getattr(model.net, "divisor", 1)),
        "input": {
            "name": "image",
            "shape": axes,
            "dtype": "float32",
            "channels": channel_names(model.modalities, model.context_slices),
            "note": "preprocessed as the keys spacing, crop, normalization say; 2D networks take axial slices"
            + (f", with the {model.context_slices} slices on each side of every modality as channels (context_slices; "
               "modality-major, border slices repeated at the volume's edges)" if model.context_slices else ""),
        },
        "output": {"name": "logits", "shape": [*axes[:1], "R", *axes[2:]], "channels": list(model.regions), "activation": "sigmoid per region"},
        **data,
        "normalization_description": describe.__doc__.splitlines()[0] if describe and describe.__doc__ else normalization,
        "threshold": inference.get("threshold", 0.5),  # one value, or {region: value}
        "inference": {k: inference[k] for k in ("overlap", "flip_tta", "threshold", "postprocess") if k in inference},
        "torch_version": torch.__version__,
        **extra,
    }


class OnnxNetwork(nn.Module):
    """An ONNX file run by onnxruntime behind the interface of a network.

    Args:
        path: the ``.onnx`` file.
        device: ``cuda`` uses onnxruntime's CUDA provider when installed (``onnxruntime-gpu``),
            else the CPU; inputs and outputs stay torch tensors on the caller's device.

    Raises:
        ImportError: onnxruntime is not installed (``pip install lightning-brats[export]``).
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(f"{path}: running ONNX files needs onnxruntime: pip install 'lightning-brats[export]'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the thread count the project set
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = {k: json.loads(v) for k, v in self.session.get_modelmeta().custom_metadata_map.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial)`` float -> ``(N, R, *spatial)`` float32 logits on ``x``'s device."""
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (out,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(out).to(x.device)


def read_metadata(path: str | Path) -> dict:
    """The metadata inside an exported ``.onnx`` (through onnxruntime) or ``.pt`` (TorchScript) file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown extension, or the file holds no lightning-brats metadata.
    """
    return _load(Path(path), torch.device("cpu"))[1]


def _load(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    if not path.is_file():
        raise FileNotFoundError(f"exported={path}: no such file")
    if path.suffix == FORMATS["onnx"]:
        net = OnnxNetwork(path, device)
        metadata = net.metadata
    elif path.suffix == FORMATS["torchscript"]:
        extra = {TORCHSCRIPT_METADATA: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch 2.13, not removed
            net = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        metadata = json.loads(extra[TORCHSCRIPT_METADATA] or "{}")
    else:
        raise ValueError(f"exported={path}: expected a .onnx (onnxruntime) or .pt (TorchScript) file from lightning-brats export")
    missing = [k for k in ("modalities", "regions", "patch_size") if k not in metadata]
    if missing:
        raise ValueError(f"exported={path}: no lightning-brats metadata {missing} in the file; export it with lightning-brats export")
    return net.eval(), metadata


def load_exported_model(path: str | Path, release: Mapping | None = None, device: str = "auto") -> TrainedModel:
    """An exported file as a :class:`~lightning_brats.inference.prediction.TrainedModel`, its ``data`` config
    from the file's own metadata; ``predict.py exported=<file>`` runs it like a checkpoint.

    Args:
        path: a ``.onnx`` or ``.pt`` file written by :func:`export_model`.
        release: a ``data`` config whose release keys replace the metadata's (as for checkpoints).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Raises:
        FileNotFoundError, ValueError: see :func:`read_metadata`; ``ValueError`` also when the
            release's channels differ from the network's.
        ImportError: a ``.onnx`` file without onnxruntime installed.
    """
    path = Path(path)
    target = resolve_device(device)
    net, metadata = _load(path, target)
    flat = {k: metadata[k] for k in metadata if k in MOVED_KEYS or k in WINDOW_KEYS}
    data = with_release(upgrade_data_config(flat), release, path)
    return TrainedModel(net, data, path, target)


def _reason(exc: Exception) -> str:
    """An exception's first and last message lines (TorchScript and onnxruntime put the cause last)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return text if len(text) <= 500 else text[:497] + "..."


def _example(channels: int, size: list[int], batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(seed))


def _verify(net: nn.Module, path: Path, model: TrainedModel, dynamic: bool, tolerance: float) -> list[dict]:
    """Run the exported file against the network at the patch size (batch 2) and, when dynamic,
    first at the patch plus the divisor on every axis (batch 1: the check that fails for a graph
    with a fixed size); returns ``[{"size", "max_abs_diff"}]``, the patch size first.

    Raises:
        ExportError: the file fails to run at a size, or its logits differ by more than ``tolerance``.
    """
    exported, _ = _load(path, torch.device("cpu"))
    patch = model.patch_size
    divisor = int(getattr(net, "divisor", 1))
    sizes = ([([p + divisor for p in patch], 1)] if dynamic else []) + [(patch, 2)]
    checks = []
    for size, batch in sizes:
        x = _example(model.in_channels, size, batch, seed=len(checks))
        try:
            with torch.no_grad():
                got = exported(x)
        except Exception as exc:  # onnxruntime and TorchScript raise their own types
            where = "its traced size" if size == patch else f"spatial size {size} (traced at {patch})"
            hint = (
                f"the graph fixes the spatial size (MONAI's SwinUNETR computes its shifted-window attention mask "
                f"for the traced size); export with dynamic=false (the patch size {patch} only, which is all the "
                "sliding window feeds it)"
                if size != patch
                else "the network uses an operation the format cannot run"
            )
            raise ExportError(f"the exported file does not run at {where}: {_reason(exc)}; {hint}") from exc
        with torch.no_grad():
            expected = net(x)
        diff = float((got.float() - expected.float()).abs().max())
        if not diff <= tolerance:
            raise ExportError(f"the exported file's logits differ from the network's by {diff:.3g} > tolerance={tolerance} at size {size}")
        checks.append({"size": list(size), "max_abs_diff": diff})
    return checks[::-1]


def _export_onnx(net: nn.Module, example: torch.Tensor, path: Path, dynamic: bool, opset: int, exporter: str) -> None:
    dims = example.ndim - 2
    if exporter == "legacy":
        axes = {0: "batch", **({i + 2: "xyz"[i] for i in range(dims)} if dynamic else {})}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation and TracerWarnings; _verify checks the result
            torch.onnx.export(
                net, (example,), str(path), dynamo=False, opset_version=opset, input_names=["image"],
                output_names=["logits"], dynamic_axes={"image": axes, "logits": axes},
            )
    elif exporter == "dynamo":
        from torch.export import Dim

        shapes = ({0: Dim.DYNAMIC, **({i + 2: Dim.DYNAMIC for i in range(dims)} if dynamic else {})},)
        program = torch.onnx.export(
            net, (example,), dynamo=True, opset_version=opset, input_names=["image"], output_names=["logits"],
            dynamic_shapes=shapes, verbose=False,
        )
        program.save(str(path), external_data=False)
    else:
        raise ValueError(f"exporter={exporter!r}: expected 'legacy' (TorchScript-based) or 'dynamo' (torch.export-based)")


def _add_onnx_metadata(path: Path, metadata: Mapping) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(proto, str(path))


def export_model(
    ckpt_path: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    dynamic: bool = True,
    opset: int = 17,
    exporter: str = "legacy",
    tolerance: float = 1e-4,
    inference: Mapping | None = None,
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Export a checkpoint's network with its metadata and check the file reproduces it.

    Writes ``output`` (default: beside the checkpoint, ``<stem>.onnx`` or ``<stem>.pt``) and
    ``<output>.json`` (:func:`export_metadata` plus the verification), both atomically; the same
    metadata goes inside the file. Before the file appears it is loaded back and run on random
    input at the patch size (batch 2) and, with ``dynamic=True``, at the patch plus the
    network's divisor on every axis: its logits must match the network's within ``tolerance``.

    Args:
        ckpt_path: a checkpoint written by ``train.py``.
        fmt: ``"onnx"`` (onnxruntime; opset ``opset``) or ``"torchscript"`` (``torch.jit.trace``).
        output: the file to write.
        dynamic: batch and spatial axes of any size (multiples of the network's divisor);
            ``False``: batch only, spatial size fixed to the patch size.
        opset: ONNX opset version.
        exporter: ``"legacy"`` or ``"dynamo"`` (ONNX only; see the module docstring).
        tolerance: largest accepted absolute logit difference (fp32).
        inference: recommended inference settings recorded in the metadata (``conf/inference``).
        overwrite: replace an existing ``output``.

    Returns:
        ``(path of the exported file, metadata)``.

    Raises:
        ValueError: an unknown ``fmt`` or ``exporter``; ``output`` exists and ``overwrite`` is false.
        ExportError: the exporter fails (its first message line, the model and the format), or
            the file does not reproduce the network (where and why, and what to change).
        FileNotFoundError, ValueError: a bad checkpoint (see :func:`~lightning_brats.inference.prediction.load_trained_model`).
        ImportError: ONNX without the ``export`` extra (onnx, onnxruntime).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {sorted(FORMATS)}")
    ckpt_path = Path(ckpt_path)
    output = Path(output) if output else ckpt_path.with_suffix(FORMATS[fmt])
    if output.suffix != FORMATS[fmt]:
        raise ValueError(f"output={output}: a format={fmt} file must end in {FORMATS[fmt]} (predict.py picks the runtime by it)")
    if output.exists() and not overwrite:
        raise ValueError(f"output={output} exists; overwrite=true replaces it")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"format=onnx needs onnx and onnxruntime: pip install 'lightning-brats[export]' ({exc})") from exc
    model = load_trained_model(ckpt_path, device="cpu")
    net = model.net
    name = f"{getattr(net, 'description', type(net).__name__)} of {ckpt_path}"
    settings = {"exporter": exporter, "opset": opset} if fmt == "onnx" else {"exporter": "torch.jit.trace"}
    metadata = export_metadata(model, fmt, dynamic, inference, **settings)
    example = _example(model.in_channels, model.patch_size, 1, seed=0)
    output.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        try:
            if fmt == "onnx":
                _export_onnx(net, example, tmp, dynamic, opset, exporter)
                _add_onnx_metadata(tmp, metadata)
            else:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")  # deprecation and TracerWarnings; _verify checks the result
                    traced = torch.jit.trace(net, example, check_trace=False)
                    torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
        except ValueError:
            raise
        except Exception as exc:  # exporters raise many types (TorchExportError, RuntimeError, ...)
            raise ExportError(
                f"{name}: format={fmt} ({settings}) failed: {type(exc).__name__}: {_reason(exc)}"
                + ("; try exporter=dynamo, a higher opset= or format=torchscript" if fmt == "onnx" else "; try format=onnx")
            ) from exc
        try:
            metadata["verified"] = _verify(net, tmp, model, dynamic, tolerance)
        except ExportError as exc:
            raise ExportError(f"{name}: format={fmt}: {exc}") from exc

    atomic_save(output, write)
    atomic_save(sidecar_path(output), lambda p: p.write_text(json.dumps(metadata, indent=2) + "\n"))
    log.info(f"Exported {name} to {output} ({fmt}, {'dynamic' if dynamic else 'fixed'} spatial size); metadata {sidecar_path(output)}")
    return output, metadata
