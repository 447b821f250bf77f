"""nnU-Net's residual-encoder U-Net (ResEnc), in 2D or 3D.

Sources:

* Isensee, Wald, Ulrich, Baumgartner, Roy, Maier-Hein, Jaeger, "nnU-Net Revisited: A Call for Rigorous
  Validation in 3D Medical Image Segmentation", MICCAI 2024, arXiv:2404.09556; the presets in
  github.com/MIC-DKFZ/nnUNet, ``documentation/resenc_presets.md`` and
  ``nnunetv2/experiment_planning/experiment_planners/residual_unets/residual_encoder_unet_planners.py``
  (``ResEncUNetPlanner``, ``nnUNetPlannerResEncM/L/XL``).
* The network: ``ResidualEncoderUNet`` of github.com/MIC-DKFZ/dynamic-network-architectures
  (``architectures/unet.py``, ``building_blocks/residual_encoders.py``, ``residual.py`` (``BasicBlockD``),
  ``unet_decoder.py``), version 0.4.4.

The presets M, L and XL build the same topology (the planner's rule); they differ only in the GPU memory
target (8, 24, 40 GB), which sets the patch and batch size, so they are recipes
(``experiment=brats_resenc_m``, ``brats_resenc_l``), not networks. The rule:

* one stage per resolution, ``n_stages - 1`` stride-2 downsamplings; features ``base_filters * 2**s``
  capped at ``max_filters`` (32 doubling to 320 in 3D, 512 in 2D);
* a stem (one conv-norm-activation to ``base_filters``), then per encoder stage
  ``blocks_per_stage[s]`` residual blocks (1, 3, 4, 6, 6, 6, ...; the first of a stage strided);
* the ResNet-D block (He et al., "Bag of Tricks", CVPR 2019): conv-norm-activation, conv-norm, plus the
  skip (average pooling where strided, then a bias-free 1x1 conv-norm where the channels change),
  activation after the sum;
* a plain decoder: transposed-convolution upsampling, concatenation with the skip, one
  conv-norm-activation per stage; 1x1 heads;
* instance norm (affine, eps 1e-5), leaky ReLU 0.01, convolutions with bias, He initialisation
  (``InitWeights_He(1e-2)``) and the last norm of every residual block zeroed (each block starts as its
  skip), as nnU-Net initialises it.

Written here rather than wrapped: the ``dynamic_network_architectures`` wheel (Apache-2.0) requires
``timm``, which pulls ``torchvision`` pinned to one torch release; this network needs neither. The
modules are registered in the library's order, so its parameters (and nnU-Net ResEnc checkpoints'
weights, copied in order) load one to one; ``tests/test_resenc_mednext.py`` checks the topology against
the library's parameter counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from lightning_brats.models.layers import ACTIVATIONS, NORMS, check_patch_size, layer_spec

#: ``ResEncUNetPlanner.UNet_blocks_per_stage_encoder``: residual blocks per encoder stage.
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)


class ConvNormAct(nn.Module):
    """Convolution (same padding), normalisation, optional activation (``ConvDropoutNormReLU``)."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: int, stride: int, bias: bool,
                 norm: tuple, act: tuple | None) -> None:
        super().__init__()
        self.conv = (nn.Conv2d, nn.Conv3d)[dims - 2](cin, cout, kernel, stride, padding=(kernel - 1) // 2, bias=bias)
        self.norm = get_norm_layer(norm, dims, cout)
        self.nonlin = get_act_layer(act) if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.norm(self.conv(x)))


class ResidualBlockD(nn.Module):
    """The ResNet-D basic block of ``BasicBlockD``: ``act(norm(conv(act(norm(conv(x))))) + skip(x))``.

    The skip is the identity, or average pooling by ``stride`` then a bias-free 1x1 conv-norm where the
    channels change. ``(B, cin, *S)`` -> ``(B, cout, *S / stride)``.
    """

    def __init__(self, dims: int, cin: int, cout: int, kernel: int, stride: int, bias: bool,
                 norm: tuple, act: tuple) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(dims, cin, cout, kernel, stride, bias, norm, act)
        self.conv2 = ConvNormAct(dims, cout, cout, kernel, 1, bias, norm, None)
        self.nonlin2 = get_act_layer(act)
        skip: list[nn.Module] = []
        if stride != 1:
            skip.append((nn.AvgPool2d, nn.AvgPool3d)[dims - 2](stride, stride))
        if cin != cout:
            skip.append(ConvNormAct(dims, cin, cout, 1, 1, False, norm, None))
        self.skip = nn.Sequential(*skip)  # empty: the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin2(self.conv2(self.conv1(x)) + self.skip(x))


class ResEncUNet(nn.Module):
    """nnU-Net's residual-encoder U-Net (see the module docstring for the sources and the rule).

    Args:
        spatial_dims: 2 (axial slices) or 3 (patches).
        in_channels: input channels: the modalities, times 2k + 1 slices with ``data.context_slices = k``.
        out_channels: output channels (one logit per region).
        n_stages: resolution stages; ``n_stages - 1`` stride-2 downsamplings (nnU-Net's planner picks as
            many as keep the bottleneck at 4 voxels or more: 6 stages for 128^3, 5 for 64^3).
        base_filters: features of the first stage, doubled per stage (nnU-Net: 32).
        max_filters: cap on the features (nnU-Net: 320 in 3D, 512 in 2D).
        blocks_per_stage: residual blocks per encoder stage (nnU-Net: 1, 3, 4, 6, 6, 6, ...); ``None``
            takes the first ``n_stages`` of :data:`RESENC_BLOCKS_PER_STAGE`.
        decoder_convs: conv-norm-activation blocks per decoder stage (nnU-Net: 1).
        kernel_size: convolution kernel in every stage (nnU-Net on isotropic BraTS: 3).
        norm: ``"instance"`` (nnU-Net's), ``"batch"`` or ``"group"``.
        activation: see :data:`~lightning_brats.models.layers.ACTIVATIONS` (nnU-Net: leaky ReLU 0.01).
        deep_supervision: in training, also return the logits of the decoder stages below full
            resolution down to the second lowest (nnU-Net gives the lowest weight 0, so it is not built).

    Input ``(B, C, X, Y[, Z])``, every spatial size a multiple of ``2 ** (n_stages - 1)`` and at least
    twice that (instance norm needs more than one voxel at the bottleneck). Output ``(B, out_channels,
    X, Y[, Z])`` logits; with deep supervision in training a list, full resolution first, then
    ``(B, out_channels, *spatial / 2**k)`` for ``k = 1 .. n_stages - 3``.

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3; fewer than 2 stages, or than 4 with deep supervision;
            ``blocks_per_stage`` not ``n_stages`` long; an unknown ``norm`` or ``activation``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        n_stages: int = 6,
        base_filters: int = 32,
        max_filters: int = 320,
        blocks_per_stage: Sequence[int] | None = None,
        decoder_convs: int = 1,
        kernel_size: int = 3,
        norm: str = "instance",
        activation: str = "leakyrelu",
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if n_stages < 2:
            raise ValueError(f"n_stages must be at least 2, got {n_stages}")
        if deep_supervision and n_stages < 4:
            raise ValueError(f"deep_supervision needs n_stages >= 4 (outputs at two scales or more), got {n_stages}")
        blocks = list(RESENC_BLOCKS_PER_STAGE[:n_stages] if blocks_per_stage is None else blocks_per_stage)
        if len(blocks) != n_stages or min(blocks) < 1:
            raise ValueError(f"blocks_per_stage={blocks} must have n_stages={n_stages} entries of at least 1")
        norm_spec, act_spec = layer_spec(NORMS, norm, "norm"), layer_spec(ACTIVATIONS, activation, "activation")
        dims, k = spatial_dims, kernel_size
        self.spatial_dims, self.n_stages, self.deep_supervision = dims, n_stages, deep_supervision
        self.filters = [min(base_filters * 2**s, max_filters) for s in range(n_stages)]
        self.blocks_per_stage = blocks
        self.description = f"ResEnc U-Net, {dims}D, {n_stages} stages"

        # the encoder (dynamic_network_architectures' ResidualEncoder: a stem, then the stages)
        self.stem = ConvNormAct(dims, in_channels, self.filters[0], k, 1, True, norm_spec, act_spec)
        self.stages = nn.ModuleList()
        channels = self.filters[0]
        for s, (f, n) in enumerate(zip(self.filters, blocks)):
            stride = 1 if s == 0 else 2
            self.stages.append(nn.Sequential(*[
                ResidualBlockD(dims, channels if b == 0 else f, f, k, stride if b == 0 else 1, True, norm_spec, act_spec)
                for b in range(n)
            ]))
            channels = f
        # the decoder (UNetDecoder), lowest stage first
        self.decoder = nn.ModuleList()
        self.upsample = nn.ModuleList()
        up = (nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 2]
        for f_low, f in zip(self.filters[:0:-1], self.filters[-2::-1]):
            self.decoder.append(nn.Sequential(*[
                ConvNormAct(dims, 2 * f if c == 0 else f, f, k, 1, True, norm_spec, act_spec) for c in range(decoder_convs)
            ]))
            self.upsample.append(up(f_low, f, 2, 2, bias=True))
        # 1x1 heads on the highest decoder stages (heads[-1]: full resolution), as models.UNet
        self.num_outputs = n_stages - 2 if deep_supervision else 1
        self.first_head = n_stages - 1 - self.num_outputs
        conv1 = (nn.Conv2d, nn.Conv3d)[dims - 2]
        self.heads = nn.ModuleList(conv1(f, out_channels, 1) for f in self.filters[-2 - self.first_head::-1])
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """nnU-Net's ``InitWeights_He(1e-2)`` on every (transposed) convolution, zero biases, and the last
        norm of each residual block zeroed (``init_last_bn_before_add_to_0``)."""
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=1e-2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, ResidualBlockD):
            nn.init.zeros_(module.conv2.norm.weight)
            nn.init.zeros_(module.conv2.norm.bias)

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this (``2 ** (n_stages - 1)``)."""
        return 2 ** (self.n_stages - 1)

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ``ValueError`` naming the network, the offending size and the nearest valid one.

        Args:
            patch_size: spatial patch (or slice) size in voxels, ``spatial_dims`` values.
        """
        check_patch_size(f"{self.description} (2**(n_stages-1) = {self.divisor})", patch_size,
                         self.spatial_dims, self.divisor, minimum=2 * self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, C, *spatial)`` -> ``(B, out_channels, *spatial)`` logits, or with deep supervision in
        training the list described in the class docstring."""
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        every_head = self.deep_supervision and self.training
        outputs = []
        for i, (up, stage, skip) in enumerate(zip(self.upsample, self.decoder, reversed(skips[:-1]))):
            x = stage(torch.cat([up(x), skip], dim=1))
            if i >= self.first_head and (every_head or i == len(self.decoder) - 1):
                outputs.append(self.heads[i - self.first_head](x))
        return outputs[::-1] if every_head else outputs[-1]
