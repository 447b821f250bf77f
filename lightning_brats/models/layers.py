"""Names shared by every network: normalisation and activation layers, the patch-size check."""

from __future__ import annotations

from collections.abc import Sequence

#: ``norm`` config value -> MONAI layer spec (instance norm with learned affine, as nnU-Net;
#: group norm with 8 groups, as SegResNet).
NORMS = {
    "instance": ("instance", {"affine": True}),
    "batch": ("batch", {}),
    "group": ("group", {"num_groups": 8}),
}

#: ``activation`` config value -> MONAI layer spec (leaky ReLU 0.01 is nnU-Net's).
ACTIVATIONS = {
    "leakyrelu": ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
    "relu": ("relu", {"inplace": True}),
    "prelu": ("prelu", {}),
    "gelu": ("gelu", {}),
}


def layer_spec(table: dict, name: str, what: str) -> tuple:
    """Look up ``name`` in :data:`NORMS` or :data:`ACTIVATIONS`.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in table:
        raise ValueError(f"{what}={name!r} is not one of {sorted(table)}")
    return table[name]


def check_patch_size(
    model: str, patch_size: Sequence[int], spatial_dims: int, divisor: int, minimum: int | None = None
) -> None:
    """Check that a network can take ``patch_size`` before any training step.

    Args:
        model: the network's name for the message (e.g. ``"UNet depth 4"``, ``"SwinUNETR"``).
        patch_size: spatial patch (3D) or slice (2D) size in voxels.
        spatial_dims: the network's dimensionality (2 or 3).
        divisor: every spatial size must be a multiple of this (``2 ** downsamplings``).
        minimum: smallest size per axis (default ``divisor``).

    Raises:
        ValueError: the dimensionality differs, or a size is not a multiple of ``divisor``;
            the message names the model, the size and the nearest valid size.
    """
    if len(patch_size) != spatial_dims:
        raise ValueError(
            f"{model} is {spatial_dims}D but the patch size {list(patch_size)} has {len(patch_size)} dimensions: "
            f"set data.sampling={spatial_dims}d or pick a {len(patch_size)}D model"
        )
    minimum = minimum or divisor
    bad = [p for p in patch_size if p % divisor or p < minimum]
    if bad:
        nearest = [max(minimum, int(p / divisor + 0.5) * divisor) for p in patch_size]  # halves round up
        at_least = f" of at least {minimum}" if minimum > divisor else ""
        raise ValueError(
            f"{model} needs every patch size to be a multiple of {divisor}{at_least}; patch size {list(patch_size)} "
            f"is not (offending sizes {bad}); nearest valid patch size: {nearest}"
        )
