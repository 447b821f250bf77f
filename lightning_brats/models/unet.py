"""The U-Net family in 2D or 3D: plain, residual, attention-gated, deeply supervised.

One definition, parameterised, so variants differ only where their papers differ:

* plain (``block="plain"``): Ronneberger et al., MICCAI 2015 (2D); Cicek et al., MICCAI 2016
  (3D), in nnU-Net's block design (Isensee et al., Nature Methods 2021): each stage is two
  conv-norm-activation blocks (MONAI ``UnetBasicBlock``), the first of a stage downsamples by
  a strided convolution, the decoder upsamples by transposed convolution and concatenates the skip;
* residual (``block="residual"``): each stage is a residual block (MONAI ``UnetResBlock``,
  He et al. 2016) in encoder and decoder;
* attention (``attention=True``): additive attention gates on the skips (Oktay et al., MIDL
  2018; MONAI ``AttentionBlock``) gated by the upsampled decoder features;
* deep supervision (``deep_supervision=True``): nnU-Net's extra 1x1 heads on the decoder
  stages, returned during training only (see :meth:`UNet.forward`).

Not MONAI's ``DynUNet``, though plain and deep-supervision variants equal it given the same weights
(``tests/test_models.py``): its decoder has no residual blocks and its skips no attention gates, and its
own weight init (Kaiming normal, zero biases) and parameter names would change seeded runs and checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetBasicBlock, UnetResBlock
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from lightning_brats.models.layers import ACTIVATIONS, NORMS, check_patch_size, layer_spec

_BLOCKS = {"plain": UnetBasicBlock, "residual": UnetResBlock}


class UNet(nn.Module):
    """A U-Net parameterised by spatial dimensions, depth, filters, block and extras.

    Args:
        spatial_dims: 2 (axial slices) or 3 (patches).
        in_channels: input channels: the modalities, times 2k + 1 slices with ``data.context_slices = k``.
        out_channels: output channels (one logit per region).
        depth: number of resolution stages; the input is downsampled ``depth - 1`` times.
        base_filters: filters of the first stage; doubled per stage.
        max_filters: cap on filters per stage (nnU-Net: 320 in 3D, 512 in 2D).
        norm: ``"instance"``, ``"batch"`` or ``"group"`` (8 groups).
        activation: ``"leakyrelu"`` (0.01), ``"relu"``, ``"prelu"`` or ``"gelu"``.
        dropout: dropout probability inside each block (0 for none).
        block: ``"plain"`` (two conv-norm-activation) or ``"residual"``.
        attention: gate the skip connections with additive attention (Oktay et al. 2018).
        deep_supervision: in training mode, also return logits from the decoder stages below
            full resolution, down to the second lowest (nnU-Net gives the lowest weight 0).

    Input ``(B, C, X, Y[, Z])`` with every spatial size divisible by ``2 ** (depth - 1)``
    (see :meth:`check_patch_size`).

    Raises:
        ValueError: an unknown ``spatial_dims``, ``norm``, ``activation`` or ``block``; a depth
            below 2, or below 4 with deep supervision.
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
        activation: str = "leakyrelu",
        dropout: float = 0.0,
        block: str = "plain",
        attention: bool = False,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if block not in _BLOCKS:
            raise ValueError(f"block={block!r} is not one of {sorted(_BLOCKS)}")
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        if deep_supervision and depth < 4:
            raise ValueError(f"deep_supervision needs depth >= 4 (outputs at two scales or more), got depth {depth}")
        norm_spec, act_spec = layer_spec(NORMS, norm, "norm"), layer_spec(ACTIVATIONS, activation, "activation")
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.deep_supervision = deep_supervision
        self.description = f"{block} U-Net{' with attention gates' if attention else ''}, {spatial_dims}D, depth {depth}"
        make_block = _BLOCKS[block]

        def stage(cin: int, cout: int, stride: int) -> nn.Module:  # two 3x3 convolutions, the first strided
            return make_block(spatial_dims, cin, cout, 3, stride, norm_spec, act_spec, dropout or None)

        filters = [min(base_filters * 2**i, max_filters) for i in range(depth)]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for i, f in enumerate(filters):
            self.encoder.append(stage(channels, f, 1 if i == 0 else 2))
            channels = f
        up = (nn.ConvTranspose2d, nn.ConvTranspose3d)[spatial_dims - 2]
        conv1 = (nn.Conv2d, nn.Conv3d)[spatial_dims - 2]
        # 1x1 output heads on the highest-resolution decoder stages: the full-resolution one, plus
        # with deep supervision those below it down to the second lowest (nnU-Net weights the
        # lowest 0, so it is not computed). heads[-1] is the full-resolution output.
        self.num_outputs = max(1, depth - 2) if deep_supervision else 1
        self.first_head = depth - 1 - self.num_outputs  # index of the first decoder stage with a head
        self.upsample, self.decoder, self.gates, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, (f_low, f) in enumerate(zip(filters[:0:-1], filters[-2::-1])):
            self.upsample.append(up(f_low, f, 2, stride=2))
            self.decoder.append(stage(2 * f, f, 1))
            if attention:
                self.gates.append(AttentionBlock(spatial_dims, f_int=max(f // 2, 1), f_g=f, f_l=f))
            if i >= self.first_head:
                self.heads.append(conv1(f, out_channels, 1))

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this (``2 ** (depth - 1)``)."""
        return 2 ** (self.depth - 1)

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ``ValueError`` naming the network, the offending size and the nearest valid one.

        Args:
            patch_size: spatial patch (or slice) size in voxels, ``spatial_dims`` values.
        """
        check_patch_size(f"{self.description} (2**(depth-1) = {self.divisor})", patch_size, self.spatial_dims, self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, C, *spatial)`` -> ``(B, out_channels, *spatial)`` logits.

        With deep supervision and in training mode, a list instead: the full-resolution
        logits first, then ``(B, out_channels, *spatial / 2**k)`` for ``k = 1 .. num_outputs - 1``.
        """
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs = []
        every_head = self.deep_supervision and self.training
        for i, (up, stage, skip) in enumerate(zip(self.upsample, self.decoder, reversed(skips[:-1]))):
            x = up(x)
            if self.gates:
                skip = self.gates[i](x, skip)
            x = stage(torch.cat([x, skip], dim=1))
            if i >= self.first_head and (every_head or i == len(self.upsample) - 1):
                outputs.append(self.heads[i - self.first_head](x))
        return outputs[::-1] if every_head else outputs[-1]
