"""Segmentation networks: the U-Net family and MONAI's SegResNet, SwinUNETR and DynUNet."""

from lightning_brats.models.monai_nets import DynUNet, SegResNet, SwinUNETR
from lightning_brats.models.unet import UNet

__all__ = ["DynUNet", "SegResNet", "SwinUNETR", "UNet"]
