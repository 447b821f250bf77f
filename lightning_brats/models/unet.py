"""The plain U-Net in 2D or 3D, as configured by nnU-Net.

Ronneberger et al., MICCAI 2015 (2D); Cicek et al., MICCAI 2016 (3D); the block design
follows nnU-Net (Isensee et al., Nature Methods 2021): each stage is two
conv-norm-LeakyReLU blocks, the first of a stage downsamples with a strided convolution,
the decoder upsamples with transposed convolutions and concatenates the skip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_NORMS = {
    "instance": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
    "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
}


class ConvBlock(nn.Sequential):
    """Conv (3x3[x3]) -> norm -> LeakyReLU(0.01)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        conv = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]
        super().__init__(
            conv(in_channels, out_channels, 3, stride=stride, padding=1),
            _NORMS[norm][spatial_dims](out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet(nn.Module):
    """A U-Net parameterised by spatial dimensions, depth and filters.

    Args:
        spatial_dims: 2 (axial slices) or 3 (patches).
        in_channels: input channels (modalities).
        out_channels: output channels (one logit per region).
        depth: number of resolution stages; the input is downsampled ``depth - 1`` times.
        base_filters: filters of the first stage; doubled per stage.
        max_filters: cap on filters per stage (nnU-Net: 320 in 3D, 512 in 2D).
        norm: ``"instance"`` or ``"batch"``.

    Input ``(B, C, X, Y[, Z])`` with every spatial size divisible by ``2 ** (depth - 1)``
    (see :meth:`check_patch_size`); output ``(B, out_channels, X, Y[, Z])`` logits.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        depth: int = 5,
        base_filters: int = 32,
        max_filters: int = 320,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")
        self.spatial_dims = spatial_dims
        self.depth = depth
        filters = [min(base_filters * 2**i, max_filters) for i in range(depth)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for i, f in enumerate(filters):
            stride = 1 if i == 0 else 2
            self.encoder.append(
                nn.Sequential(ConvBlock(spatial_dims, channels, f, stride, norm), ConvBlock(spatial_dims, f, f, 1, norm))
            )
            channels = f
        up = (nn.ConvTranspose2d, nn.ConvTranspose3d)[spatial_dims - 2]
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for f_low, f in zip(filters[:0:-1], filters[-2::-1]):
            self.upsample.append(up(f_low, f, 2, stride=2))
            self.decoder.append(
                nn.Sequential(ConvBlock(spatial_dims, 2 * f, f, 1, norm), ConvBlock(spatial_dims, f, f, 1, norm))
            )
        self.head = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2](filters[0], out_channels, 1)

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this (``2 ** (depth - 1)``)."""
        return 2 ** (self.depth - 1)

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ``ValueError`` naming the offending size when the depth cannot divide it.

        Args:
            patch_size: spatial patch (or slice) size in voxels, ``spatial_dims`` values.
        """
        if len(patch_size) != self.spatial_dims:
            raise ValueError(
                f"patch size {list(patch_size)} has {len(patch_size)} dimensions but the U-Net is "
                f"{self.spatial_dims}D: set data.sampling={self.spatial_dims}d or pick a {len(patch_size)}D model"
            )
        bad = [p for p in patch_size if p % self.divisor]
        if bad:
            nearest = [max(self.divisor, round(p / self.divisor) * self.divisor) for p in patch_size]
            raise ValueError(
                f"patch size {list(patch_size)} is not divisible by 2**(depth-1) = {self.divisor} for a U-Net of "
                f"depth {self.depth} (offending sizes {bad}); nearest valid patch size: {nearest}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        for up, stage, skip in zip(self.upsample, self.decoder, reversed(skips[:-1])):
            x = stage(torch.cat([up(x), skip], dim=1))
        return self.head(x)
