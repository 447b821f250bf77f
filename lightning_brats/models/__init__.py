"""Segmentation networks: the U-Net family and MONAI's SegResNet, SwinUNETR and DynUNet, each a
:class:`SegmentationNetwork` (``num_outputs`` and ``check_patch_size``)."""

from lightning_brats.models.monai_nets import DynUNet, SegResNet, SwinUNETR
from lightning_brats.models.protocol import SegmentationNetwork, check_network
from lightning_brats.models.unet import UNet

__all__ = ["DynUNet", "SegResNet", "SegmentationNetwork", "SwinUNETR", "UNet", "check_network"]
