"""Case-level cross-validation splits: seeded k-fold, and nnU-Net's ``splits_final.json`` format.

The folds are drawn over case IDs, never over patches or slices, so no case is on both sides
(nnU-Net v2 keeps its splits in their own utility and file in the same way,
``nnunetv2/utilities/crossval_split.py``; the file format is its ``splits_final.json``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lightning_brats.data.readers import DataError
from lightning_brats.io import atomic_save


def kfold_split(case_ids: Sequence[str], num_folds: int, fold: int, seed: int) -> tuple[list[str], list[str]]:
    """Split cases into training and validation for one fold.

    The sorted case IDs are shuffled with ``seed`` and cut into ``num_folds`` near-equal
    folds; fold ``fold`` validates, the rest train. The same seed gives the same folds on
    any machine, and no case is on both sides.

    Raises:
        ValueError: ``fold`` is outside ``[0, num_folds)`` or there are fewer cases than folds.
    """
    if not 0 <= fold < num_folds:
        raise ValueError(f"data.fold={fold} is outside [0, {num_folds}) for data.num_folds={num_folds}")
    if len(case_ids) < num_folds:
        raise ValueError(f"{len(case_ids)} cases cannot make data.num_folds={num_folds} folds")
    ordered = sorted(case_ids)
    permuted = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    folds = np.array_split(np.arange(len(permuted)), num_folds)
    val = sorted(permuted[i] for i in folds[fold])
    train = sorted(set(ordered) - set(val))
    return train, val


def make_splits(case_ids: Sequence[str], num_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """All folds of :func:`kfold_split`, as nnU-Net's ``splits_final.json``: ``[{"train": [...], "val": [...]}, ...]``."""
    return [dict(zip(("train", "val"), kfold_split(case_ids, num_folds, k, seed))) for k in range(num_folds)]


def read_splits(path: str | Path) -> list[dict[str, list[str]]]:
    """Read a splits file: a list of ``{"train": [...], "val": [...]}`` (nnU-Net's format) or our
    ``{"seed": ..., "num_folds": ..., "folds": [...]}``.

    Raises:
        DataError: the file is missing, not JSON, or a fold lacks ``train``/``val`` lists.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read splits ({exc})") from exc
    folds = data["folds"] if isinstance(data, dict) and "folds" in data else data
    if not isinstance(folds, list) or not all(
        isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list) for f in folds
    ):
        raise DataError(f"{path}: expected a list of {{\"train\": [...], \"val\": [...]}} folds")
    return folds


def write_splits(path: str | Path, case_ids: Sequence[str], num_folds: int, seed: int) -> bool:
    """Write the folds of :func:`make_splits` to ``path`` (atomically), unless the file there was drawn
    from the same cases, seed and number of folds already.

    The file is ``{"seed": ..., "num_folds": ..., "cases": [...], "folds": [...]}`` (what
    :func:`read_splits` reads; ``folds`` is nnU-Net's ``splits_final.json`` list). An unreadable
    file is replaced.

    Returns:
        ``True`` when the file was written, ``False`` when the one there was kept.
    """
    path = Path(path)
    ids = sorted(case_ids)
    record = {"seed": seed, "num_folds": num_folds, "cases": ids}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError:
            stored = {}
        if {k: stored.get(k) for k in record} == record:
            return False
    record["folds"] = make_splits(ids, num_folds, seed)
    atomic_save(path, lambda p: p.write_text(json.dumps(record, indent=1)))
    return True
