"""MedNeXt (Roy et al., "MedNeXt: Transformer-driven Scaling of ConvNets for Medical Image Segmentation",
MICCAI 2023, arXiv:2303.09975), MONAI's implementation (``monai.networks.nets.MedNeXt``, MONAI >= 1.4),
in 2D or 3D, behind the zoo's interface.

The sizes S, B, M and L are the paper's (Table 1; MONAI's ``create_mednext``): expansion ratios and
blocks per stage, 32 features doubling per stage, 4 downsamplings, residual blocks, per-channel group
norm, kernel 3 (the paper also trains k5 from k3 by UpKern; "nnU-Net Revisited", Isensee et al. 2024,
trains both from scratch: on BraTS 2021 Dice 91.35 for L k3 and 91.50 for L k5).

On CPUs the 3D network's depthwise convolutions run in fp32 inside bf16 autocast (PyTorch has no CPU bf16
kernel for them: 205 s against 11 s for the U-Net per ``benchmark_models.py`` step before this, see
experiments/README.md); everything else follows ``trainer.precision``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks import nets
from torch import nn

from lightning_brats.models.layers import check_patch_size


class _CpuFp32Conv3d(nn.Conv3d):
    """A 3D convolution that leaves CPU bf16 autocast for fp32: PyTorch has no bf16 kernel for grouped
    (depthwise) 3D convolutions on CPUs and falls back to a reference loop (measured 6-55x slower than fp32
    for MedNeXt's 3x3x3 depthwise convolution on an AVX512-BF16 EPYC). GPUs and fp32 runs are untouched."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class _CpuFp32ConvTranspose3d(nn.ConvTranspose3d):
    """:class:`_CpuFp32Conv3d` for MedNeXt's depthwise transposed convolutions (its upsampling)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float(), output_size)
        return super().forward(x, output_size)


#: size -> encoder and decoder expansion ratios per stage, the bottleneck's, and blocks down, at the
#: bottleneck and up (MedNeXt paper, Table 1; the same numbers as MONAI's ``create_mednext``, checked in
#: tests/test_resenc_mednext.py).
MEDNEXT_SIZES = {
    "S": {"encoder_expansion_ratio": (2, 2, 2, 2), "decoder_expansion_ratio": (2, 2, 2, 2), "bottleneck_expansion_ratio": 2,
          "blocks_down": (2, 2, 2, 2), "blocks_bottleneck": 2, "blocks_up": (2, 2, 2, 2)},
    "B": {"encoder_expansion_ratio": (2, 3, 4, 4), "decoder_expansion_ratio": (4, 4, 3, 2), "bottleneck_expansion_ratio": 4,
          "blocks_down": (2, 2, 2, 2), "blocks_bottleneck": 2, "blocks_up": (2, 2, 2, 2)},
    "M": {"encoder_expansion_ratio": (2, 3, 4, 4), "decoder_expansion_ratio": (4, 4, 3, 2), "bottleneck_expansion_ratio": 4,
          "blocks_down": (3, 4, 4, 4), "blocks_bottleneck": 4, "blocks_up": (4, 4, 4, 3)},
    "L": {"encoder_expansion_ratio": (3, 4, 8, 8), "decoder_expansion_ratio": (8, 8, 4, 3), "bottleneck_expansion_ratio": 8,
          "blocks_down": (3, 4, 8, 8), "blocks_bottleneck": 8, "blocks_up": (8, 8, 4, 3)},
}


class MedNeXt(nets.MedNeXt):
    """MONAI's MedNeXt of one of the paper's sizes, optionally with fewer stages or features.

    Args:
        spatial_dims: 2 (axial slices) or 3 (patches).
        in_channels: input channels: the modalities, times 2k + 1 slices with ``data.context_slices = k``.
        out_channels: output channels (one logit per region).
        size: ``"S"``, ``"B"``, ``"M"`` or ``"L"`` (:data:`MEDNEXT_SIZES`).
        kernel_size: depthwise kernel of every block (the paper: 3 or 5).
        init_filters: features of the first stage, doubled per stage (the paper: 32).
        downsamplings: how many of the size's 4 stages to keep (fewer for CPU-sized networks): the first
            ``downsamplings`` encoder stages and the last decoder stages (the high-resolution ones).
        deep_supervision: in training, also return the logits of the decoder stages below full resolution
            down to the second lowest (the lowest, at the bottleneck, is weighted 0 by nnU-Net's loss, as the
            paper trained it, so its head is not built: MONAI's ``out_blocks[0]`` is an identity).

    Input ``(B, C, X, Y[, Z])`` with every spatial size a multiple of ``2 ** downsamplings`` and at least
    twice that (the per-channel group norm needs more than one voxel at the bottleneck). Output
    ``(B, out_channels, X, Y[, Z])`` logits; with deep supervision in training a list, full resolution
    first, then ``(B, out_channels, *spatial / 2**k)`` for ``k = 1 .. downsamplings - 1``.

    Raises:
        ValueError: an unknown size; ``downsamplings`` outside 1..4, or below 2 with deep supervision;
            ``spatial_dims`` not 2 or 3.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        size: str = "S",
        kernel_size: int = 3,
        init_filters: int = 32,
        downsamplings: int = 4,
        deep_supervision: bool = True,
    ) -> None:
        if size.upper() not in MEDNEXT_SIZES:
            raise ValueError(f"size={size!r} is not one of {sorted(MEDNEXT_SIZES)}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not 1 <= downsamplings <= 4 or (deep_supervision and downsamplings < 2):
            raise ValueError(f"downsamplings={downsamplings} must be in [{2 if deep_supervision else 1}, 4]")
        preset = MEDNEXT_SIZES[size.upper()]
        n = downsamplings
        super().__init__(
            spatial_dims=spatial_dims,
            init_filters=init_filters,
            in_channels=in_channels,
            out_channels=out_channels,
            encoder_expansion_ratio=preset["encoder_expansion_ratio"][:n],
            decoder_expansion_ratio=preset["decoder_expansion_ratio"][4 - n:],
            bottleneck_expansion_ratio=preset["bottleneck_expansion_ratio"],
            kernel_size=kernel_size,
            deep_supervision=deep_supervision,
            use_residual_connection=True,
            blocks_down=preset["blocks_down"][:n],
            blocks_bottleneck=preset["blocks_bottleneck"],
            blocks_up=preset["blocks_up"][4 - n:],
            norm_type="group",
            global_resp_norm=False,
        )
        if deep_supervision:
            self.out_blocks[0] = nn.Identity()  # the bottleneck's head: weight 0, never computed
        if spatial_dims == 3:  # the depthwise convolutions in fp32 under CPU bf16 autocast (same weights, same keys)
            for module in self.modules():
                if type(module) is nn.Conv3d and module.groups > 1:
                    module.__class__ = _CpuFp32Conv3d
                elif type(module) is nn.ConvTranspose3d and module.groups > 1:
                    module.__class__ = _CpuFp32ConvTranspose3d
        self.spatial_dims = spatial_dims
        self.divisor = 2**n
        self.num_outputs = n if deep_supervision else 1
        self.description = f"MedNeXt {size.upper()} k{kernel_size}, {spatial_dims}D, {n} downsamplings"

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ``ValueError`` naming the network, the offending size and the nearest valid one.

        Args:
            patch_size: spatial patch (or slice) size in voxels, ``spatial_dims`` values.
        """
        check_patch_size(self.description, patch_size, self.spatial_dims, self.divisor, minimum=2 * self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """MONAI's forward, with the deep-supervision outputs as a list (full resolution first) that leaves
        out the bottleneck's head; in eval mode the full-resolution logits only."""
        x = self.stem(x)
        skips = []
        for stage, down in zip(self.enc_stages, self.down_blocks):
            x = stage(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        every_head = self.do_ds and self.training
        lower = []
        for i, (up, stage) in enumerate(zip(self.up_blocks, self.dec_stages)):
            if every_head and i >= 1:
                lower.append(self.out_blocks[i](x))
            x = stage(up(x) + skips[-(i + 1)])
        out = self.out_0(x)
        return [out, *lower[::-1]] if every_head else out
