"""The preprocessing settings: one frozen object that the cache, training, validation and prediction read.

A network only works on inputs prepared the way it was trained on, so what changes the
preprocessed arrays is defined once, here, with its defaults: :class:`PreprocessingSettings`,
built from a ``data`` config by :meth:`PreprocessingSettings.from_data`, whether that config is
the composed ``cfg.data`` of a training run or the resolved one a checkpoint carries
(:data:`~lightning_brats.training.checkpoints.CONFIG_KEY`). The preprocessing cache keys its folder by it
(:class:`~lightning_brats.data.preprocess.PreprocessedCache`) and the predictor preprocesses
with it, so the two cannot drift apart. nnU-Net keeps the same rule with its plans object
(``ConfigurationManager``), read by its preprocessor in training and inference alike.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass

from lightning_brats.data.normalization import CROPS, NORMALIZATIONS


@dataclass(frozen=True)
class PreprocessingSettings:
    """Everything that decides what a case looks like after preprocessing.

    The ``data.*`` keys of the same names set them; a key missing from a ``data`` config (a
    checkpoint trained before the option existed) takes the default given here, the only
    place the defaults are written in code.

    Attributes:
        modalities: modality names stacked as input channels, in this order.
        spacing: target voxel size in mm (3 values), or ``None`` to keep each case's own.
        normalization: a key of :data:`~lightning_brats.data.preprocess.NORMALIZATIONS`:
            ``"zscore"`` (nnU-Net's, inside the brain) or ``"minmax"`` (to [0, 1] inside the brain).
        crop: ``"nonzero"`` (bounding box of the brain) or ``"center"`` (``crop_size`` voxels
            in the middle of the original grid).
        crop_size: ``(x, y, z)`` voxels of the original grid for ``crop="center"``.

    Raises:
        ValueError: no modalities, a ``spacing`` that is not 3 positive values, an unknown
            ``normalization`` or ``crop``, or ``crop="center"`` without 3 ``crop_size`` values;
            the message names the ``data.`` key.
    """

    modalities: tuple[str, ...]
    spacing: tuple[float, ...] | None = None
    normalization: str = "zscore"
    crop: str = "nonzero"
    crop_size: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the types once, here
        if isinstance(self.modalities, str) or not self.modalities:
            raise ValueError(f"data.modalities={self.modalities!r}: expected a non-empty list of modality names")
        set_(self, "modalities", tuple(str(m) for m in self.modalities))
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or min(spacing) <= 0:
                raise ValueError(f"data.spacing={list(self.spacing)}: expected 3 positive voxel sizes in mm, or null")
            set_(self, "spacing", spacing)
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"data.normalization={self.normalization!r}: expected one of {sorted(NORMALIZATIONS)}")
        if self.crop not in CROPS:
            raise ValueError(f"data.crop={self.crop!r}: expected {' or '.join(repr(c) for c in CROPS)}")
        if self.crop_size is not None:
            set_(self, "crop_size", tuple(int(v) for v in self.crop_size))
        if self.crop == "center" and (self.crop_size is None or len(self.crop_size) != 3):
            raise ValueError(
                f"data.crop=center needs data.crop_size with 3 values (voxels), got {self.crop_size}"
            )

    @classmethod
    def from_data(cls, data: Mapping, source: str | None = None) -> PreprocessingSettings:
        """The settings of a ``data`` config: the one way from a config to the settings.

        Args:
            data: a ``data`` config (a mapping, e.g. ``cfg.data`` or the resolved ``data`` a
                checkpoint carries); keys other than the settings' are ignored unless
                ``source`` is given.
            source: what ``data`` comes from (e.g. ``"checkpoint run/epoch_011.ckpt"``). When
                given, ``data`` must be one this version can reproduce: every key must be an
                argument of its ``_target_`` (the datamodule), so a setting added after this
                version (which might change the preprocessing) is refused rather than ignored.

        Raises:
            ValueError: an invalid or unknown setting; with ``source``, the message starts with
                it and names the ``data.`` key.
        """
        try:
            if source is not None:
                _check_known_keys(data)
            values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
            if "modalities" not in values:
                raise ValueError("data.modalities is missing: the network's input channels are unknown")
            return cls(**values)
        except ValueError as exc:
            if source is None:
                raise
            raise ValueError(f"{source}: cannot reproduce its preprocessing: {exc}") from exc

    def as_record(self) -> dict:
        """Plain JSON-able values (lists, not tuples), key -> value, as the cache fingerprints them."""
        return {
            "modalities": list(self.modalities),
            "spacing": None if self.spacing is None else list(self.spacing),
            "normalization": self.normalization,
            "crop": self.crop,
            "crop_size": None if self.crop_size is None else list(self.crop_size),
        }


def _check_known_keys(data: Mapping) -> None:
    """Raise ``ValueError`` for a key of ``data`` its ``_target_`` (the datamodule class) does not take."""
    target = str(data.get("_target_"))
    module, _, name = target.rpartition(".")
    try:
        parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise ValueError(f"data._target_={target!r} is not a datamodule of this version ({exc})") from exc
    unknown = sorted(str(k) for k in data if k != "_target_" and k not in parameters)
    if unknown:
        names = ", ".join(f"data.{k}" for k in unknown)
        raise ValueError(
            f"{names}: not a setting this version of lightning-brats knows ({target} takes {sorted(parameters)}), "
            "so it cannot tell whether it changes the preprocessing; use the version that trained the checkpoint"
        )

