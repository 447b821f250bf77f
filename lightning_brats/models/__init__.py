"""Segmentation networks: the U-Net family, nnU-Net's residual-encoder U-Net, MONAI's SegResNet, SwinUNETR,
DynUNet and MedNeXt, each a
:class:`SegmentationNetwork` (``num_outputs`` and ``check_patch_size``)."""

from lightning_brats.models.mednext import MedNeXt
from lightning_brats.models.monai_nets import DynUNet, SegResNet, SwinUNETR
from lightning_brats.models.protocol import SegmentationNetwork, check_network
from lightning_brats.models.resenc import ResEncUNet
from lightning_brats.models.unet import UNet

__all__ = ["DynUNet", "MedNeXt", "ResEncUNet", "SegResNet", "SegmentationNetwork", "SwinUNETR", "UNet", "check_network"]
