"""Neighbouring axial slices as extra input channels for 2D networks (2.5D input).

With ``data.context_slices = k`` a 2D network sees, for the axial slice ``z`` it segments, the slices
``z - k ... z + k`` of every modality, stacked as input channels; it still predicts slice ``z`` only.
This gives a 2D network some of the through-plane context a 3D network has, at a 2D network's cost
(only its first convolution grows); a common input for 2D segmentation networks ("2.5D").

Conventions, the single definition every path follows (training samples, whole-case validation,
prediction, export):

- **channel order**: modality-major, slice offsets ascending within a modality: with modalities
  ``[flair, t1, t1ce, t2]`` and ``k = 1`` the channels are ``flair[z-1], flair[z], flair[z+1], t1[z-1],
  ...``; channel ``m * (2k + 1) + (d + k)`` is modality ``m`` at offset ``d`` (:func:`channel_names`).
- **edges**: a neighbour outside the volume repeats the border slice (replicate padding):
  :func:`context_indices` clips the slice indices to ``[0, Z - 1]``.
- ``k = 0`` is plain 2D (one channel per modality, the same tensors as without this module); 3D
  sampling needs ``k = 0`` (:func:`check_context`).

Arrays follow the cache's layout: a case is ``(C, X, Y, Z)`` with Z the axial (slice) axis; the
slice-major copy 2D training reads is ``(Z, C, X, Y)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lightning_brats import input_channels  # the one definition (the configs' resolver), re-exported here

#: The config key, named in messages.
CONTEXT_KEY = "data.context_slices"


def check_context(context_slices: int, sampling: str = "2d") -> int:
    """``context_slices`` as an int, checked against the sampling.

    Args:
        context_slices: neighbours on each side of the segmented slice (``data.context_slices``).
        sampling: ``"2d"`` or ``"3d"`` (``data.sampling``).

    Returns:
        ``k >= 0``.

    Raises:
        ValueError: ``k`` is negative or not a whole number, or ``k > 0`` with 3D sampling (a 3D
            network sees its neighbours already); the message names ``data.context_slices``.
    """
    if isinstance(context_slices, bool) or int(context_slices) != context_slices or int(context_slices) < 0:
        raise ValueError(f"{CONTEXT_KEY}={context_slices!r}: expected a whole number of slices >= 0 (0: plain 2D)")
    k = int(context_slices)
    if k and str(sampling) != "2d":
        raise ValueError(
            f"{CONTEXT_KEY}={k} needs data.sampling=2d: neighbouring slices as channels are for 2D networks, a 3D "
            f"network sees them in its patch; set {CONTEXT_KEY}=0 (or data.sampling=2d with a 2D model)"
        )
    return k


def slices_per_modality(context_slices: int) -> int:
    """Input channels per modality: ``2k + 1`` (:func:`input_channels` of one modality)."""
    return input_channels(1, context_slices)


def channel_names(modalities: Sequence[str], context_slices: int = 0) -> list[str]:
    """Names of the input channels in order, e.g. ``["flair[z-1]", "flair[z]", "flair[z+1]", "t1[z-1]", ...]``;
    the plain modality names with ``k = 0``."""
    k = int(context_slices)
    if not k:
        return [str(m) for m in modalities]
    return [f"{m}[z{d:+d}]" if d else f"{m}[z]" for m in modalities for d in range(-k, k + 1)]


def input_description(modalities: Sequence[str], context_slices: int, patch_size: Sequence[int]) -> str:
    """The input in words for model cards, e.g. ``"4 channels (flair, t1, t1ce, t2), patch [96, 96]"`` or, with
    ``k = 1``, ``"12 channels (flair, t1, t1ce, t2, each at slices z-1..z+1, modality-major), patch [96, 96]"``."""
    names = ", ".join(str(m) for m in modalities)
    k = int(context_slices)
    where = f", each at slices z-{k}..z+{k}, modality-major" if k else ""
    return f"{input_channels(modalities, k)} channels ({names}{where}), patch {list(patch_size)}"


def context_indices(depth: int, context_slices: int, z: int | None = None) -> np.ndarray:
    """The source slices of each stack, border slices repeated at the edges.

    Args:
        depth: slices in the volume (Z).
        context_slices: ``k``.
        z: one slice, or ``None`` for all.

    Returns:
        ``(2k + 1,)`` int64 slice indices ``clip(z - k ... z + k, 0, depth - 1)`` for ``z``, or the
        ``(depth, 2k + 1)`` table of every slice's.

    Raises:
        IndexError: ``z`` outside ``[0, depth)``.
    """
    k = int(context_slices)
    centres = np.arange(depth) if z is None else np.asarray(int(z))
    if z is not None and not 0 <= int(z) < depth:
        raise IndexError(f"slice {z} outside a volume of {depth} slices")
    return np.clip(centres[..., None] + np.arange(-k, k + 1), 0, depth - 1).astype(np.int64)


def stack_slice(image: np.ndarray, z: int, context_slices: int) -> np.ndarray:
    """The 2.5D input of axial slice ``z`` from a ``(C, X, Y, Z)`` volume.

    Args:
        image: ``(C, X, Y, Z)`` (a memory map is fine: only ``2k + 1`` slices are read).
        z: the segmented slice.
        context_slices: ``k``.

    Returns:
        ``(C * (2k + 1), X, Y)`` in ``image``'s dtype, modality-major (module docstring); ``image[..., z]``
        itself for ``k = 0``.
    """
    if not context_slices:
        return image[..., z]
    stack = np.asarray(image[..., context_indices(image.shape[-1], context_slices, z)])  # (C, X, Y, 2k + 1)
    return np.moveaxis(stack, -1, 1).reshape(-1, *image.shape[1:3])


def stack_axial(axial: np.ndarray, z: int, context_slices: int) -> np.ndarray:
    """:func:`stack_slice` from the slice-major copy: the same values from ``2k + 1`` contiguous blocks.

    Args:
        axial: ``(Z, C, X, Y)`` (:attr:`CachedCase.axial <lightning_brats.data.preprocess.CachedCase.axial>`).
        z: the segmented slice.
        context_slices: ``k``.

    Returns:
        ``(C * (2k + 1), X, Y)``, equal to ``stack_slice(image, z, k)`` of the same case.
    """
    if not context_slices:
        return axial[z]
    stack = np.asarray(axial[context_indices(axial.shape[0], context_slices, z)])  # (2k + 1, C, X, Y)
    return stack.transpose(1, 0, 2, 3).reshape(-1, *axial.shape[2:])


def stack_volume(image: torch.Tensor, context_slices: int) -> torch.Tensor:
    """Every axial slice's 2.5D input at once: the stacks of :func:`stack_slice` for all ``z``.

    Whole-case validation and prediction call this once per case and then run the 2D network on
    each slice of the result (MONAI's ``SliceInferer``), so slice ``z`` of the output is the input the
    network was trained on for slice ``z``. Vectorised: the border slices repeated ``k`` times on each
    side (replicate padding, :func:`context_indices`' clipping), a sliding window of ``2k + 1`` slices
    (``unfold``, a view) and one copy into modality-major order; about 3x faster than gathering by
    :func:`context_indices` on a CPU (tests check both give the same).

    Args:
        image: ``(B, C, X, Y, Z)``.
        context_slices: ``k``.

    Returns:
        ``(B, C * (2k + 1), X, Y, Z)`` on ``image``'s device and dtype; ``image`` itself for ``k = 0``.
        Memory: ``2k + 1`` times the input's.
    """
    k = int(context_slices)
    if not k:
        return image
    batch, channels, x, y, depth = image.shape
    padded = torch.cat([image[..., :1].expand(-1, -1, -1, -1, k), image, image[..., -1:].expand(-1, -1, -1, -1, k)], dim=-1)
    windows = padded.unfold(-1, slices_per_modality(k), 1)  # (B, C, X, Y, Z, 2k + 1): window z = slices z - k .. z + k
    return windows.permute(0, 1, 5, 2, 3, 4).reshape(batch, channels * slices_per_modality(k), x, y, depth)


def per_modality(values: torch.Tensor | np.ndarray, context_slices: int, dim: int = 1):
    """Repeat per-modality values for each of their ``2k + 1`` channels (modality-major), so that
    every context slice of a modality gets the same draw, e.g. ``(B, C)`` scale factors -> ``(B, C * (2k + 1))``."""
    repeats = slices_per_modality(context_slices)
    if repeats == 1:
        return values
    if isinstance(values, np.ndarray):
        return np.repeat(values, repeats, axis=dim)
    return values.repeat_interleave(repeats, dim=dim)


__all__ = [
    "CONTEXT_KEY",
    "channel_names",
    "check_context",
    "context_indices",
    "input_channels",
    "input_description",
    "per_modality",
    "slices_per_modality",
    "stack_axial",
    "stack_slice",
    "stack_volume",
]
