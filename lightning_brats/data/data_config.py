"""The shape of a ``data`` config, and the one place that maps the flat shape before it onto it.

A ``data`` config (``conf/data/<name>.yaml``) holds three parts, as nnU-Net keeps ``dataset.json`` apart
from its plans:

- ``data.release``: the release's description (:class:`~lightning_brats.data.release.Release`: layout
  and reader, label codes, regions, post-processing and evaluation), chosen whole from
  ``conf/data/release/``; all that ``predict.py`` and ``eval.py`` read from ``data=<name>``;
- ``data.preprocessing``: the preprocessing plan
  (:class:`~lightning_brats.data.settings.PreprocessingSettings`: modalities, spacing, normalisation,
  crop), which keys the cache and which prediction repeats from a checkpoint;
- every other key: the datamodule's own arguments (sampling, patches, batch, folds, workers,
  augmentation; :class:`~lightning_brats.data.datamodule.SegmentationDataModule`).

Before this split (lightning-brats at 60dd6e4 and earlier) the parts' keys sat side by side at the top
of ``data`` (``data.regions``, ``data.spacing``, ...). Checkpoints of those versions carry such configs,
and users type such overrides; :func:`upgrade_data_config` and :func:`upgrade_overrides` move them to
their place with one table, :data:`MOVED_KEYS`, derived from the two dataclasses' fields.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping

from lightning_brats.data.release import Release
from lightning_brats.data.settings import PreprocessingSettings

#: the parts of a ``data`` config that are objects of their own, and what each holds
PARTS = {"release": Release, "preprocessing": PreprocessingSettings}

#: a key of the flat ``data`` config before the split -> its path inside ``data`` now
#: (``"spacing"`` -> ``"preprocessing.spacing"``); the datamodule's arguments kept their place
MOVED_KEYS = {f.name: f"{part}.{f.name}" for part, cls in PARTS.items() for f in dataclasses.fields(cls)}

_OVERRIDE = re.compile(r"^(?P<prefix>~|\+\+|\+)?data\.(?P<key>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[.=@].*|)$", re.DOTALL)


def upgrade_data_config(data: Mapping) -> dict:
    """``data`` in the current shape: the moved keys of a flat (pre-split) config put into their parts.

    A config of the current shape comes back as a plain copy. In a mixed one (a part, and a moved key
    at the top, e.g. a user's experiment file still writing ``data: {spacing: ...}`` onto a current data
    config) the top-level key wins, as it was merged last. Values are not changed, only moved.

    Args:
        data: a ``data`` config, OmegaConf or plain (e.g. the resolved one a checkpoint carries).

    Returns:
        a new plain dict; ``data`` is not changed.
    """
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(data, resolve=False) if OmegaConf.is_config(data) else dict(data)
    upgraded = {k: v for k, v in plain.items() if k not in MOVED_KEYS}
    for part in PARTS:
        if isinstance(upgraded.get(part), Mapping):
            upgraded[part] = dict(upgraded[part])
    for key, path in MOVED_KEYS.items():
        if key in plain:
            part, name = path.split(".")
            if not isinstance(upgraded.get(part), dict):
                upgraded[part] = {}
            upgraded[part][name] = plain[key]
    return upgraded


def upgrade_overrides(overrides: Iterable[str]) -> list[str]:
    """Command-line overrides with the flat ``data`` keys written as their current paths.

    ``data.spacing=[2,2,2]`` -> ``data.preprocessing.spacing=[2,2,2]``, ``data.layout.label_suffix=-seg``
    -> ``data.release.layout.label_suffix=-seg``, ``+data.evaluation.x=1`` -> ``+data.release.evaluation.x=1``,
    sweeps (``data.spacing=[1,1,1],[2,2,2]``) alike; every other override (``data=brats23``, ``data.fold=1``,
    ``model=unet2d``, flags) is kept as it is. The entry points (:func:`accept_flat_data_keys`) and
    :func:`lightning_brats.api.compose` apply it, so the short forms users already type keep working.
    """
    upgraded = []
    for override in overrides:
        match = _OVERRIDE.match(override)
        if match and match["key"] in MOVED_KEYS:
            override = f"{match['prefix'] or ''}data.{MOVED_KEYS[match['key']]}{match['rest']}"
        upgraded.append(override)
    return upgraded


def accept_flat_data_keys(main):
    """Decorate a ``@hydra.main`` entry point so its command line may use the flat ``data`` keys
    (:func:`upgrade_overrides` applied to ``sys.argv`` before Hydra parses it)."""
    import functools
    import sys

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        if not args and not kwargs:  # called as the command (Hydra reads sys.argv), not with a config
            sys.argv[1:] = upgrade_overrides(sys.argv[1:])
        return main(*args, **kwargs)

    return wrapper
