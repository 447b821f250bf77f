"""Stage 4, evaluation: label maps in -> scores, comparisons, reports and pictures out.

Enters: predicted label maps (NIfTI, from :mod:`lightning_brats.inference`) and the ground truth
read by :mod:`lightning_brats.data.readers`; during training, the validation batches of
:mod:`lightning_brats.training` (Dice, lesion-wise scores, pictures). Leaves: ``metrics.csv``,
``summary.csv``, ``report.html``, comparison tables and figures.

- :mod:`.metrics`: region metrics with the BraTS empty-mask conventions (Dice, HD95, ...);
- :mod:`.lesion_metrics`: the lesion-wise definitions of BraTS 2023-2025;
- :mod:`.scoring`: scoring a case and summarising cases, and the CSV reader (was ``evaluation.py``);
- :mod:`.comparison`: paired tests and the BraTS ranking of several models;
- :mod:`.report`: ``report.html``; :mod:`.visualize`: the pictures.

This package was the module ``lightning_brats/evaluation.py``: its names are re-exported here, so
``from lightning_brats.evaluation import score_case, read_csv, write_csv`` keeps working, without a
warning (``write_csv`` itself now lives in :mod:`lightning_brats.io`).
"""

from lightning_brats.evaluation import scoring as _scoring
from lightning_brats.evaluation.scoring import (
    METRICS,
    STATISTICS,
    TEXT_COLUMNS,
    case_metrics,
    describe,
    read_csv,
    read_prediction,
    score_case,
    summarize,
    write_csv,
)

__all__ = [
    "METRICS", "STATISTICS", "TEXT_COLUMNS", "case_metrics", "describe", "read_csv", "read_prediction", "score_case",
    "summarize", "write_csv",
]


def __getattr__(name: str):
    """Any other name the old module ``lightning_brats.evaluation`` held."""
    try:
        return getattr(_scoring, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
