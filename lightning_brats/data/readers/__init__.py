"""Case readers, one module per dataset layout, and the registry ``data.layout.reader`` names.

A data config describes its layout and names the reader that reads it::

    layout:
      reader: brats_folders          # a name in READERS
      modality_suffixes: {flair: _flair, t1: _t1, t1ce: _t1ce, t2: _t2}
      label_suffix: _seg

:func:`make_reader` builds the reader from that mapping (the other keys are the reader's
arguments). A ``_target_`` instead of ``reader`` (the configs before the registry, still stored
in older checkpoints, or a reader class of your own) is instantiated by Hydra.

======================  ==========================================  =====================================
``reader``              class                                       layout
======================  ==========================================  =====================================
``brats_folders``       :class:`.brats_folders.BratsFolderReader`   ``<case>/<case>_<modality>.nii[.gz]``
``msd``                 :class:`.msd.MsdReader`                     ``<task>/imagesTr/<case>.nii.gz`` (4D)
``lgg_slices``          :class:`.lgg_slices.LggSliceReader`         ``<case>/<case>_<n>[_mask].tif``
======================  ==========================================  =====================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lightning_brats.data.readers.base import (
    CaseFiles,
    CaseReader,
    CaseSource,
    DataError,
    LoadedCase,
    check_label_values,
    check_same_grid,
    walk,
)
from lightning_brats.data.readers.brats_folders import BratsFolderReader
from lightning_brats.data.readers.lgg_slices import LggSliceReader, SliceFiles
from lightning_brats.data.readers.msd import MsdReader

__all__ = [
    "READERS", "BratsFolderReader", "CaseFiles", "CaseReader", "CaseSource", "DataError", "LggSliceReader",
    "LoadedCase", "MsdReader", "SliceFiles", "check_label_values", "check_same_grid", "load_case", "make_reader",
    "register_reader", "walk",
]

#: reader name (``data.layout.reader``) -> reader class
READERS: dict[str, type[CaseReader]] = {}


def register_reader(cls: type[CaseReader]) -> type[CaseReader]:
    """Add a reader class to :data:`READERS` under its ``name`` (usable as a class decorator).

    Raises:
        ValueError: another class is registered under the same name.
    """
    if READERS.get(cls.name, cls) is not cls:
        raise ValueError(f"reader name {cls.name!r} is taken by {READERS[cls.name].__qualname__}")
    READERS[cls.name] = cls
    return cls


for _reader in (BratsFolderReader, MsdReader, LggSliceReader):
    register_reader(_reader)


def make_reader(layout: CaseReader | Mapping) -> CaseReader:
    """The reader a ``data.release.layout`` config describes.

    Args:
        layout: a mapping with ``reader`` (a name in :data:`READERS`) and that reader's
            arguments; or one with ``_target_`` (a class path, instantiated by Hydra with the other
            keys); or a reader already built (returned as it is).

    Raises:
        ValueError: the mapping names no reader, an unknown reader (the message lists the known
            ones), or arguments the reader does not take.
    """
    if not isinstance(layout, Mapping):
        return layout
    if "_target_" in layout:
        import hydra.utils

        return hydra.utils.instantiate(layout)
    arguments = {str(k): v for k, v in layout.items() if k != "reader"}
    name = layout.get("reader")
    if name is None:
        raise ValueError(f"data.release.layout names no reader: set data.release.layout.reader to one of {sorted(READERS)}")
    if name not in READERS:
        raise ValueError(f"data.release.layout.reader={name!r} is not a known reader; known readers: {sorted(READERS)}")
    try:
        return READERS[name](**arguments)
    except TypeError as exc:
        raise ValueError(f"data.release.layout: reader {name!r} cannot take {sorted(arguments)} ({exc})") from exc


def load_case(
    files: CaseSource, modalities: Sequence[str], labels: Mapping[str, int] | None = None, read_label: bool = True
) -> LoadedCase:
    """Load a found case with the reading its files need (NIfTI files or slice images).

    Args:
        files: a case from a reader's ``find_cases`` (or :class:`CaseFiles` given explicitly).
        modalities: modality names stacked as channels, e.g. ``["flair", "t1", "t1ce", "t2"]``.
        labels: the dataset's label map (name -> code); values other than these and 0 are errors.
        read_label: ``False`` skips the label map even when the case has one (prediction).

    Returns:
        a :class:`LoadedCase`: ``image (C, X, Y, Z)`` float32, ``label (X, Y, Z)`` uint8 or ``None``.

    Raises:
        DataError: a file is unreadable, or does not match the case's other files; the message names it.
    """
    return files.load(modalities, labels, read_label)
