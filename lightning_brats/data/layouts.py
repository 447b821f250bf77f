"""Deprecated: the readers moved to :mod:`lightning_brats.data.readers` (one module per layout).

This module re-exports them under their old names so that old imports, and the
``data.layout._target_`` that older configs and checkpoints store
(``lightning_brats.data.layouts.BratsLayout``, ``MsdLayout``, ``SliceLayout``), still work.
New configs name a reader instead: ``data.layout.reader: brats_folders``.
"""

from __future__ import annotations

from lightning_brats.data.readers import (
    BratsFolderReader,
    CaseFiles,
    CaseReader,
    CaseSource,
    DataError,
    LggSliceReader,
    LoadedCase,
    MsdReader,
    SliceFiles,
    check_label_values,
    check_same_grid,
    load_case,
    walk,
)

#: old names of the readers (``data.layout._target_`` in configs before the reader registry)
BratsLayout = BratsFolderReader
MsdLayout = MsdReader
SliceLayout = LggSliceReader
#: any reader (the Protocol every registered reader satisfies)
Layout = CaseReader

__all__ = [
    "BratsLayout", "CaseFiles", "CaseSource", "DataError", "Layout", "LoadedCase", "MsdLayout", "SliceFiles",
    "SliceLayout", "check_label_values", "check_same_grid", "load_case", "walk",
]
