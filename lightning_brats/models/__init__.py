"""Segmentation networks: the U-Net family and MONAI's SegResNet and SwinUNETR."""

from lightning_brats.models.monai_nets import SegResNet, SwinUNETR
from lightning_brats.models.unet import UNet

__all__ = ["SegResNet", "SwinUNETR", "UNet"]
