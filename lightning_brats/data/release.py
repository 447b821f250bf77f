"""A release's description: what its files look like and what its labels mean, with no training setting.

nnU-Net keeps a dataset's ``dataset.json`` (channels, labels, regions, file ending) apart from its plans
(spacing, normalisation, patch and batch size); :class:`Release` is our ``dataset.json``: ``data.release``
in a ``data`` config (``conf/data/release/<name>.yaml``, chosen by ``data=<name>``). It is all that
``predict.py``, ``eval.py`` and ``lightning-brats tune-postprocessing`` need to read a release's files and
score them, and what ``data=<release>`` replaces when a model predicts another release's files. The
preprocessing plan is :class:`~lightning_brats.data.settings.PreprocessingSettings` (``data.preprocessing``),
and the rest of ``data`` the datamodule's own arguments (:mod:`lightning_brats.data.data_config`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The post-processing of a release that states none (brats20, brats21, brats23, msd_task01, lgg, and
#: checkpoints trained before the key existed): the BraTS 2020/2021 winners' rule, enhancing-tumour
#: components under 100 voxels become the label around them.
DEFAULT_POSTPROCESS = {"region": "et", "min_voxels": 100}


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts and lists (resolved); other values as they are."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@dataclass(frozen=True)
class Release:
    """One release (BraTS 2020, BraTS 2024 GLI, MSD Task01, LGG, ...): files, label codes, regions, rules.

    Attributes:
        layout: the file layout: a mapping naming its reader and the reader's arguments
            (``{reader: brats_folders, modality_suffixes: {...}, ...}``; see
            :func:`~lightning_brats.data.readers.make_reader`), or a reader already built.
        labels: label name -> code in the release's label files (e.g. ``{ncr_net: 1, ed: 2, et: 4}``).
        regions: region name -> label codes, in output-channel order (e.g. ``{wt: [1, 2, 4], tc: [1, 4], et: [4]}``).
        postprocess: the release's post-processing rule ``{region, min_voxels}`` (small components of
            ``region`` become the label around it; optionally ``keep_largest``, regions reduced to their
            largest component), or ``None`` for none; default :data:`DEFAULT_POSTPROCESS`.
        evaluation: how the release is scored: ``metrics`` (``legacy`` | ``brats2023`` | ``brats2024`` |
            ``brats2025``), ``lesion_wise`` parameters, ``lesionwise_validation`` and the scored ``regions``
            (see :mod:`lightning_brats.evaluation.lesion_metrics`), or ``None`` (legacy metrics).

    Raises:
        ValueError: (from :meth:`from_config`) a key that is not one of these, or a missing
            ``layout``, ``labels`` or ``regions``; the message names ``data.release.<key>``.
    """

    layout: Any
    labels: dict[str, int]
    regions: dict[str, list[int]]
    postprocess: dict | None = field(default_factory=lambda: dict(DEFAULT_POSTPROCESS))
    evaluation: dict | None = None

    @classmethod
    def from_config(cls, release: Mapping) -> Release:
        """The release a ``data.release`` config (a mapping, OmegaConf or plain) describes, as plain values.

        Raises:
            ValueError: an unknown or a missing key (named as ``data.release.<key>``).
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(k) for k in release if k not in names)
        if unknown:
            raise ValueError(f"data.release.{unknown[0]}: not part of a release description (it holds {names})")
        missing = [k for k in ("layout", "labels", "regions") if release.get(k) is None]
        if missing:
            raise ValueError(f"data.release.{missing[0]} is missing: a release needs its layout, label codes and regions")
        values = {k: _plain(release[k]) for k in names if k in release}
        values["labels"] = {str(k): int(v) for k, v in values["labels"].items()}
        values["regions"] = {str(k): [int(c) for c in v] for k, v in values["regions"].items()}
        return cls(**values)

    def as_config(self) -> dict:
        """The ``data.release`` mapping of this release (plain values; a built reader stays an object)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
