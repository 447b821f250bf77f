"""What every network of the zoo offers the training module, prediction and export."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SegmentationNetwork(Protocol):
    """A segmentation network: ``(B, C, *patch)`` inputs to ``(B, R, *patch)`` logits.

    Attributes:
        num_outputs: outputs in training: 1, or with deep supervision the full-resolution logits and
            ``num_outputs - 1`` lower-resolution ones, returned as a list (``(B, R, *patch / 2**k)``); in
            eval mode every network returns the full-resolution logits only.
    """

    num_outputs: int

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Refuse a patch the network cannot take (its dimensionality, or sides that its downsamplings
        do not divide).

        Raises:
            ValueError: naming the network, the size and the nearest valid one.
        """

    def __call__(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]: ...


def check_network(net: object, name: str) -> SegmentationNetwork:
    """``net`` if it offers :class:`SegmentationNetwork`.

    Raises:
        TypeError: it lacks ``num_outputs`` or ``check_patch_size`` (the message starts with ``model=<name>``
            and says how the zoo's MONAI wrappers add them).
    """
    if isinstance(net, SegmentationNetwork):
        return net
    missing = [attr for attr in ("num_outputs", "check_patch_size") if not hasattr(net, attr)]
    raise TypeError(
        f"model={name}: {type(net).__qualname__} lacks {' and '.join(missing)}, which every network needs "
        "(lightning_brats.models.SegmentationNetwork): give it num_outputs (1 without deep supervision) and "
        "check_patch_size(patch_size), as lightning_brats/models/monai_nets.py does for MONAI's networks"
    )
