"""The names and defaults of nnU-Net's intensity augmentation probabilities, written once, without torch.

:class:`IntensityProbabilities` is imported by :mod:`lightning_brats.data.intensity_augment` (which applies
them) and, through :func:`register_config_defaults`, by ``import lightning_brats``, which offers the defaults
to Hydra for ``data.augment`` before any of the project's configs is composed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class IntensityProbabilities:
    """The probabilities per sample of nnU-Net's intensity augmentations, in application order: the one
    place their names and defaults are written (0: off, so that presets train as they were recorded).

    :class:`~lightning_brats.data.intensity_augment.IntensityAugmentation` applies them;
    :class:`~lightning_brats.data.sampling.Augmentation` (``data.augment``) inherits them beside its spatial settings; the ``data.augment`` config gets them
    from here (:func:`register_config_defaults`, no YAML restates them); nnU-Net's values are
    ``conf/augment/nnunet.yaml`` (:data:`lightning_brats.data.intensity_augment.NNUNET_PROBABILITIES` reads it).

    Raises:
        ValueError: a probability outside ``[0, 1]`` (named as ``data.augment.<name>``).
    """

    noise_prob: float = 0.0
    blur_prob: float = 0.0
    brightness_prob: float = 0.0
    contrast_prob: float = 0.0
    low_res_prob: float = 0.0
    inverted_gamma_prob: float = 0.0
    gamma_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in PROBABILITY_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"data.augment.{name}={value!r}: expected a probability in [0, 1]")


#: the settings, in application order; their values are probabilities per sample
PROBABILITY_FIELDS = tuple(f.name for f in fields(IntensityProbabilities))


def register_config_defaults() -> None:
    """Offer the default probabilities to Hydra as the config ``data/augment/intensity_defaults``
    (``{noise_prob: 0.0, ...}``), which ``conf/data/base/datamodule.yaml`` puts under ``data.augment``, so
    ``data.augment.noise_prob=0.1`` needs no ``+`` and the defaults stay written only in
    :class:`IntensityProbabilities`. Called by ``import lightning_brats`` (as the configs' resolvers are
    registered), before any of the project's configs is composed."""
    from hydra.core.config_store import ConfigStore

    defaults = {f.name: f.default for f in fields(IntensityProbabilities)}
    ConfigStore.instance().store(group="data/augment", name="intensity_defaults", node=defaults)
