"""MONAI's reference 3D networks behind the same interface as :class:`~lightning_brats.models.UNet`.

Each adds ``spatial_dims``, ``divisor`` and ``check_patch_size`` so the training module can
refuse a patch size the network cannot take before any training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks import nets

from lightning_brats.models.layers import ACTIVATIONS, NORMS, check_patch_size, layer_spec


class SegResNet(nets.SegResNet):
    """MONAI's SegResNet (Myronenko, BrainLes 2018: the BraTS 2018 winner, without its VAE branch), 3D.

    Args:
        in_channels: input channels: the modalities, times 2k + 1 slices with ``data.context_slices = k``.
        out_channels: output channels (one logit per region).
        init_filters: filters of the first stage (MONAI's BraTS tutorial: 16).
        blocks_down: residual blocks per encoder stage; ``len - 1`` downsamplings.
        blocks_up: residual blocks per decoder stage.
        dropout: dropout probability after the first convolution (``None`` for none).
        norm: ``"group"`` (8 groups, the paper's), ``"instance"`` or ``"batch"``.
        activation: see :data:`~lightning_brats.models.layers.ACTIVATIONS` (the paper: ReLU).

    Input ``(B, C, X, Y, Z)`` with sizes divisible by ``2 ** (len(blocks_down) - 1)``; output
    ``(B, out_channels, X, Y, Z)`` logits.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        init_filters: int = 16,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        dropout: float | None = 0.2,
        norm: str = "group",
        activation: str = "relu",
    ) -> None:
        super().__init__(
            spatial_dims=3,
            init_filters=init_filters,
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=dropout,
            act=layer_spec(ACTIVATIONS, activation, "activation"),
            norm=layer_spec(NORMS, norm, "norm"),
            blocks_down=tuple(blocks_down),
            blocks_up=tuple(blocks_up),
        )
        self.spatial_dims = 3
        self.divisor = 2 ** (len(blocks_down) - 1)
        self.num_outputs = 1

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ``ValueError`` naming SegResNet, the size and the nearest valid one."""
        check_patch_size(f"SegResNet ({len(self.blocks_down) - 1} downsamplings)", patch_size, 3, self.divisor)


class SwinUNETR(nets.SwinUNETR):
    """MONAI's SwinUNETR (Hatamizadeh et al., BrainLes 2021 / 2022), 3D.

    Args:
        in_channels: input channels: the modalities, times 2k + 1 slices with ``data.context_slices = k``.
        out_channels: output channels (one logit per region).
        feature_size: embedding size, a multiple of 12 (MONAI's BraTS tutorial: 48).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        norm: ``"instance"``, ``"batch"`` or ``"group"`` for the convolutional decoder.
        dropout: dropout rate (``drop_rate``) and stochastic depth (``dropout_path_rate``).
        gradient_checkpointing: recompute activations in the backward pass (MONAI's
            ``use_checkpoint``): less memory for more time.

    Input ``(B, C, X, Y, Z)`` with sizes divisible by 32 (patch embedding 2 x four merges) and
    at least 64 (the deepest features must keep more than one voxel for normalisation); output ``(B, out_channels, X, Y, Z)`` logits.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        norm: str = "instance",
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            feature_size=feature_size,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            norm_name=layer_spec(NORMS, norm, "norm"),
            drop_rate=dropout,
            dropout_path_rate=dropout,
            use_checkpoint=gradient_checkpointing,
            spatial_dims=3,
        )
        self.spatial_dims = 3
        self.divisor = 32
        self.num_outputs = 1

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ``ValueError`` naming SwinUNETR, the size and the nearest valid one."""
        check_patch_size("SwinUNETR", patch_size, 3, self.divisor, minimum=64)


class DynUNet(nets.DynUNet):
    """MONAI's DynUNet, the network of NVIDIA's BraTS 2021 entry (Futrega et al., "Optimized U-Net for
    Brain Tumor Segmentation", arXiv:2110.03352), 3D, isotropic.

    One stage per entry of ``filters``: the first keeps the resolution, every further one halves it
    with a strided convolution (``len(filters) - 1`` downsamplings), each stage two
    conv-norm-activation blocks (residual with ``res_block``), transposed-convolution upsampling.

    With ``deep_supervision`` the training-mode output is a list, full resolution first, then the
    ``deep_supr_num`` heads of the decoder stages below it at their own scales
    ``(B, out_channels, *spatial / 2**k)``, k = 1 .. deep_supr_num, the convention of
    :class:`~lightning_brats.models.UNet` that :func:`~lightning_brats.training.losses.deep_supervision_loss`
    expects (targets are downsampled to each head, as NVIDIA's loss does). MONAI's own forward would
    upsample the heads to full size and stack them; this one returns them where they are computed.
    In eval mode the output is the full-resolution logits only.

    Args:
        in_channels: input channels: the modalities, times 2k + 1 slices with ``data.context_slices = k``.
        out_channels: output channels (one logit per region).
        filters: filters per stage (the paper: 64, 96, 128, 192, 256, 384, 512).
        kernel_size: convolution kernel size in every stage (the paper: 3).
        norm: ``"instance"`` (the paper's), ``"batch"`` or ``"group"``.
        activation: see :data:`~lightning_brats.models.layers.ACTIVATIONS` (the paper: leaky ReLU 0.01).
        deep_supervision: also return the lower decoder heads in training.
        deep_supr_num: how many (the paper: 2); at most ``len(filters) - 2``.
        res_block: residual blocks (the paper tried them and kept plain ones).
        dropout: dropout probability (``None`` for none).

    Input ``(B, C, X, Y, Z)`` with every size a multiple of ``2 ** (len(filters) - 1)`` and at least
    twice that, so the bottleneck keeps 2 voxels per axis (NVIDIA's ``--min_fmap 2``; instance norm
    needs more than one voxel).

    Raises:
        ValueError: fewer than 3 filters, or ``deep_supr_num`` outside ``[1, len(filters) - 2]``
            with deep supervision.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filters: Sequence[int] = (64, 96, 128, 192, 256, 384, 512),
        kernel_size: int = 3,
        norm: str = "instance",
        activation: str = "leakyrelu",
        deep_supervision: bool = True,
        deep_supr_num: int = 2,
        res_block: bool = False,
        dropout: float | None = None,
    ) -> None:
        filters = [int(f) for f in filters]
        if len(filters) < 3:
            raise ValueError(f"DynUNet needs at least 3 filters (stages), got {filters}")
        if deep_supervision and not 1 <= deep_supr_num <= len(filters) - 2:
            raise ValueError(
                f"deep_supr_num={deep_supr_num} must be in [1, {len(filters) - 2}] for {len(filters)} stages"
            )
        strides = [1] + [2] * (len(filters) - 1)
        super().__init__(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[kernel_size] * len(filters),
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=filters,
            dropout=dropout,
            norm_name=layer_spec(NORMS, norm, "norm"),
            act_name=layer_spec(ACTIVATIONS, activation, "activation"),
            deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num,
            res_block=res_block,
        )
        self.spatial_dims = 3
        self.divisor = 2 ** (len(filters) - 1)
        self.num_outputs = 1 + deep_supr_num if deep_supervision else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.output_block(self.skip_layers(x))
        if self.training and self.deep_supervision:
            # the skip layers wrote each supervised decoder stage's head output into self.heads
            return [out, *self.heads[: self.num_outputs - 1]]
        return out

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ``ValueError`` naming DynUNet, the size and the nearest valid one."""
        check_patch_size(
            f"DynUNet ({len(self.filters) - 1} downsamplings)", patch_size, 3, self.divisor, minimum=2 * self.divisor
        )
