"""Segmentation networks."""

from lightning_brats.models.unet import UNet

__all__ = ["UNet"]
