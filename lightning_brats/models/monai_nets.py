"""MONAI's reference 3D networks behind the same interface as :class:`~lightning_brats.models.UNet`.

Each adds ``spatial_dims``, ``divisor`` and ``check_patch_size`` so the training module can
refuse a patch size the network cannot take before any training step.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks import nets

from lightning_brats.models.layers import ACTIVATIONS, NORMS, check_patch_size, layer_spec


class SegResNet(nets.SegResNet):
    """MONAI's SegResNet (Myronenko, BrainLes 2018: the BraTS 2018 winner, without its VAE branch), 3D.

    Args:
        in_channels: input channels (modalities).
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

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ``ValueError`` naming SegResNet, the size and the nearest valid one."""
        check_patch_size(f"SegResNet ({len(self.blocks_down) - 1} downsamplings)", patch_size, 3, self.divisor)


class SwinUNETR(nets.SwinUNETR):
    """MONAI's SwinUNETR (Hatamizadeh et al., BrainLes 2021 / 2022), 3D.

    Args:
        in_channels: input channels (modalities).
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

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise ``ValueError`` naming SwinUNETR, the size and the nearest valid one."""
        check_patch_size("SwinUNETR", patch_size, 3, self.divisor, minimum=64)
