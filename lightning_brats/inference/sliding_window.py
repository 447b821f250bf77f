"""Whole-case inference: Gaussian sliding window (3D) or slice by slice (2D), and its settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from monai.inferers import SliceInferer, sliding_window_inference
from torch import nn

from lightning_brats.data.context import check_context, stack_volume

#: The threshold of regions an ``inference.threshold`` mapping does not name.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class InferenceSettings:
    """How a network segments whole cases: one object for validation, ``predict.py`` and ``eval.py``.

    Built from the ``inference`` config group (``conf/inference/default.yaml``, composed into
    ``train.yaml``, ``predict.py`` and ``eval.py`` alike) by :meth:`from_config`; the values live
    in that file only. Validation in training reads ``overlap``, ``sw_batch_size`` and
    ``threshold``, so the validation Dice is measured the way cases are predicted; it never flips
    (``flip_tta`` would make every validation 8 times slower in 3D) and runs at the trainer's
    device and precision. The Gaussian-weighted sliding window follows nnU-Net (Isensee et al. 2021)
    through MONAI's ``sliding_window_inference``.

    Attributes:
        overlap: fraction of overlap between neighbouring windows, in [0, 1) (nnU-Net: 0.5).
        sw_batch_size: windows (3D) or slices (2D) per forward pass (memory against speed; the
            result does not depend on it).
        flip_tta: average the prediction over all flips (8 in 3D, 4 in 2D); prediction only.
        threshold: probability above which a voxel belongs to a region, in (0, 1); one value for
            every region, or ``{region: value}`` for some (the others 0.5), e.g. the ET threshold
            chosen on cross-validation by ``lightning-brats tune-postprocessing``.
        postprocess: ``{region, min_voxels, keep_largest}`` keys replacing the dataset's post-processing, or
            ``None`` for none (see :func:`~lightning_brats.inference.prediction.postprocessing_for`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (prediction only).
        precision: ``"auto"``, ``"32"`` or ``"bf16"`` (prediction only; see
            :func:`~lightning_brats.training.hardware.inference_precision`).

    Raises:
        ValueError: an ``overlap``, ``sw_batch_size`` or ``threshold`` out of range (the message
            names the ``inference.`` key).
    """

    overlap: float
    sw_batch_size: int
    flip_tta: bool
    threshold: float | Mapping[str, float]
    postprocess: Mapping | None
    device: str
    precision: str

    def __post_init__(self) -> None:
        if not 0 <= float(self.overlap) < 1:
            raise ValueError(f"inference.overlap={self.overlap}: expected a fraction in [0, 1)")
        if int(self.sw_batch_size) < 1:
            raise ValueError(f"inference.sw_batch_size={self.sw_batch_size}: expected at least 1")
        if isinstance(self.threshold, Mapping):
            threshold = {str(k): float(v) for k, v in self.threshold.items()}
        else:
            threshold = float(self.threshold)
        for value in threshold.values() if isinstance(threshold, dict) else [threshold]:
            if not 0 < value < 1:
                raise ValueError(f"inference.threshold={self.threshold}: expected a probability in (0, 1)")
        postprocess = None if self.postprocess is None else {str(k): v for k, v in dict(self.postprocess).items()}
        for name, value in (("overlap", float(self.overlap)), ("sw_batch_size", int(self.sw_batch_size)),
                            ("flip_tta", bool(self.flip_tta)), ("threshold", threshold),
                            ("postprocess", postprocess), ("device", str(self.device)), ("precision", str(self.precision))):
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(cls, config: Mapping) -> InferenceSettings:
        """The settings of an ``inference`` config (``cfg.inference``, or the plain dict a checkpoint's
        model config holds).

        Raises:
            ValueError: a key missing or not a setting (names it), or a value out of range.
        """
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            config = OmegaConf.to_container(config, resolve=True)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown, missing = sorted(set(config) - set(names)), [n for n in names if n not in config]
        if unknown or missing:
            raise ValueError(
                f"the inference config {'has unknown keys ' + str(unknown) if unknown else ''}"
                f"{' and ' if unknown and missing else ''}{'lacks ' + str(missing) if missing else ''}: "
                f"expected exactly {names} (conf/inference/default.yaml)"
            )
        return cls(**{n: config[n] for n in names})

    def thresholds(self, region_names: Sequence[str]) -> list[float]:
        """The threshold of each region, in the order of ``region_names``.

        Raises:
            ValueError: ``threshold`` is a mapping naming a region not in ``region_names``.
        """
        if not isinstance(self.threshold, Mapping):
            return [self.threshold] * len(region_names)
        unknown = sorted(set(self.threshold) - set(region_names))
        if unknown:
            raise ValueError(f"inference.threshold={self.threshold} names regions {unknown}; the model's are {list(region_names)}")
        return [self.threshold.get(name, DEFAULT_THRESHOLD) for name in region_names]

    def as_dict(self) -> dict:
        """Plain values (for checkpoints' hyper-parameters, which must load with ``weights_only=True``)."""
        return dataclasses.asdict(self)


def predict_logits(
    net: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float,
    sw_batch_size: int,
    context_slices: int = 0,
) -> torch.Tensor:
    """Logits for whole cases with MONAI's Gaussian-weighted sliding window.

    A 3D network (``len(patch_size) == 3``) slides over the volume in patches; a 2D network
    runs on every axial slice (MONAI's ``SliceInferer`` along Z), each slice covered by a 2D
    sliding window of the slice size. A 2.5D network (``context_slices = k > 0``) gets, for slice
    ``z``, the ``2k + 1`` slices around it of every modality: the volume is stacked once
    (:func:`~lightning_brats.data.context.stack_volume`, one gather, the training samples' order and
    border rule) and then sliced as before.

    Args:
        net: maps ``(N, C', *patch_size)`` to ``(N, R, *patch_size)`` logits, ``C' = C (2k + 1)``.
        image: ``(B, C, X, Y, Z)``, one channel per modality.
        patch_size: window size in voxels, 2 or 3 values.
        overlap: fraction of overlap between windows (nnU-Net: 0.5).
        sw_batch_size: windows (3D) or slices (2D) per forward pass.
        context_slices: ``k``, neighbouring slices on each side as channels (2D only; ``data.context_slices``).

    Returns:
        ``(B, R, X, Y, Z)`` logits.

    Raises:
        ValueError: ``context_slices`` above 0 with a 3D ``patch_size``, or negative.
    """
    k = check_context(context_slices, f"{len(patch_size)}d")
    if len(patch_size) == 3:
        return sliding_window_inference(image, list(patch_size), sw_batch_size, net, overlap, mode="gaussian")
    image = stack_volume(image, k)
    # windows of (px, py, 1) voxels over the volume, each squeezed to a (N, C, px, py) slice for the 2D net
    inferer = SliceInferer(spatial_dim=2, roi_size=tuple(patch_size), sw_batch_size=sw_batch_size, overlap=overlap,
                           mode="gaussian")
    return inferer(image, net)


def flip_axes_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the flipped axes of a ``(B, C, X, Y, Z)`` tensor for flip test-time augmentation.

    A 3D network flips X, Y and Z (8 combinations, the identity first); a 2D network runs on
    axial slices, so only the in-plane axes X and Y are flipped (4 combinations), as nnU-Net's
    mirroring does for each configuration.

    Args:
        spatial_dims: 2 or 3, the network's dimensionality.

    Returns:
        tensor dimensions to flip per pass, e.g. ``[(), (2,), (3,), (2, 3), ...]``.
    """
    axes = (2, 3, 4)[:spatial_dims]
    return [tuple(a for bit, a in enumerate(axes) if mask >> bit & 1) for mask in range(2**spatial_dims)]


def predict_probabilities(
    net: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    overlap: float,
    sw_batch_size: int,
    flip_tta: bool = False,
    context_slices: int = 0,
) -> torch.Tensor:
    """Per-region probabilities for whole cases, optionally averaged over flipped copies.

    Each pass runs :func:`predict_logits` on a flipped copy of the image, flips the logits back
    and applies the sigmoid; the probabilities of all passes are averaged (nnU-Net's test-time
    mirroring, Isensee et al. 2021).

    Args:
        net: maps ``(N, C, *patch_size)`` to ``(N, R, *patch_size)`` logits, in eval mode.
        image: ``(B, C, X, Y, Z)``.
        patch_size: window size in voxels; 3 values for a 3D network, 2 for a 2D one.
        overlap: fraction of overlap between sliding windows.
        sw_batch_size: windows (3D) or slices (2D) per forward pass.
        flip_tta: average over all flip combinations (8 in 3D, 4 in 2D) instead of one pass.
        context_slices: ``k`` of a 2.5D network (see :func:`predict_logits`); the flips are in-plane in
            2D, so the context stacks of a flipped image are the flipped stacks.

    Returns:
        ``(B, R, X, Y, Z)`` float32 probabilities in [0, 1].
    """
    combos = flip_axes_combinations(len(patch_size)) if flip_tta else [()]
    total = None
    for dims in combos:
        flipped = torch.flip(image, dims) if dims else image
        logits = predict_logits(net, flipped, patch_size, overlap, sw_batch_size, context_slices)
        probs = torch.sigmoid(logits.float())
        probs = torch.flip(probs, dims) if dims else probs
        total = probs if total is None else total + probs
    return total / len(combos)
