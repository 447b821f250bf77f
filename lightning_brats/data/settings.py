"""The preprocessing settings: one frozen object that the cache, training, validation and prediction read.

A network only works on inputs prepared the way it was trained on, so what changes the
preprocessed arrays is defined once, here, with its defaults: :class:`PreprocessingSettings`,
built from a ``data`` config's preprocessing plan (``data.preprocessing``) by
:meth:`PreprocessingSettings.from_config`, whether that config is the composed ``cfg.data`` of a
training run or the resolved one a checkpoint carries
(:data:`~lightning_brats.training.checkpoints.CONFIG_KEY`). The preprocessing cache keys its folder by it
(:class:`~lightning_brats.data.preprocess.PreprocessedCache`) and the predictor preprocesses
with it, so the two cannot drift apart. nnU-Net keeps the same rule with its plans object
(``ConfigurationManager``), read by its preprocessor in training and inference alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from lightning_brats.data.normalization import CROPS, NORMALIZATIONS


@dataclass(frozen=True)
class PreprocessingSettings:
    """Everything that decides what a case looks like after preprocessing.

    The ``data.preprocessing.*`` keys of the same names set them (``data.spacing=...`` on a command
    line is read as ``data.preprocessing.spacing``); a key missing from a plan (a checkpoint trained
    before the option existed) takes the default given here, the only place the defaults are written.

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
    def from_config(cls, plan: Mapping, source: str | None = None) -> PreprocessingSettings:
        """The settings a preprocessing plan states (``data.preprocessing``: this class's fields).

        Args:
            plan: a mapping of this class's fields (OmegaConf or plain); a field it lacks (a
                checkpoint trained before the option existed) takes the default given here.
            source: what ``plan`` comes from (e.g. ``"checkpoint run/epoch_011.ckpt"``); errors then
                start with it.

        Raises:
            ValueError: an invalid setting, a missing ``modalities``, or a key that is not a field: a
                setting added after this version, which might change the preprocessing, is refused
                rather than ignored (named as ``data.preprocessing.<key>``).
        """
        try:
            names = [f.name for f in dataclasses.fields(cls)]
            unknown = sorted(str(k) for k in plan if k not in names)
            if unknown:
                keys = ", ".join(f"data.preprocessing.{k}" for k in unknown)
                raise ValueError(
                    f"{keys}: not a preprocessing setting this version of lightning-brats knows ({names}), so it "
                    "cannot tell what it changes; use the version that wrote it"
                )
            if plan.get("modalities") is None:
                raise ValueError("data.preprocessing.modalities is missing: the network's input channels are unknown")
            return cls(**{name: plan[name] for name in names if name in plan})
        except ValueError as exc:
            if source is None:
                raise
            raise ValueError(f"{source}: cannot reproduce its preprocessing: {exc}") from exc

    @classmethod
    def from_data(cls, data: Mapping, source: str | None = None) -> PreprocessingSettings:
        """The settings of a whole ``data`` config: its ``preprocessing`` plan (:meth:`from_config`).

        Args:
            data: a ``data`` config of this version (``cfg.data``) or the resolved one a checkpoint
                carries, in either shape: a flat one written before the ``data`` config was split
                is read through :func:`~lightning_brats.data.data_config.upgrade_data_config`.
            source: as in :meth:`from_config`.

        Raises:
            ValueError: as :meth:`from_config`.
        """
        from lightning_brats.data.data_config import upgrade_data_config

        return cls.from_config(upgrade_data_config(data)["preprocessing"], source)

    def as_record(self) -> dict:
        """Plain JSON-able values (lists, not tuples), key -> value, as the cache fingerprints them."""
        return {
            "modalities": list(self.modalities),
            "spacing": None if self.spacing is None else list(self.spacing),
            "normalization": self.normalization,
            "crop": self.crop,
            "crop_size": None if self.crop_size is None else list(self.crop_size),
        }

