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

#: ``data.fold`` that trains on every labelled case (nnU-Net's fold ``all``): no case is held out, so the
#: run's validation cases are training cases (see :func:`fold_all_split`).
FOLD_ALL = "all"
#: The override that picks a fold (``python train.py -m data.fold=0,1,2,3,4``): the one a multirun's fold
#: averages are taken over.
FOLD_KEY = "data.fold"

#: What a fold-``all`` run's ``splits.json``, log and model card say about its validation.
FOLD_ALL_NOTE = (
    "data.fold=all trains on every labelled case; its validation cases are training cases, so its validation "
    "Dice shows that training went well, not how the model does on unseen cases (that estimate comes from the "
    "numbered folds' cross-validation)"
)


def check_fold(fold: int | str, num_folds: int | None) -> int | str:
    """``data.fold`` as a fold number or :data:`FOLD_ALL`.

    Args:
        fold: the configured value: a fold number (an int, or a string of digits), or ``"all"``.
        num_folds: how many folds there are (``data.num_folds``), or ``None`` when a splits file
            decides (its fold count is checked when it is read).

    Returns:
        the fold as an ``int`` in ``[0, num_folds)``, or :data:`FOLD_ALL`.

    Raises:
        ValueError: ``fold`` is neither a whole number nor ``all``, or is outside ``[0, num_folds)``;
            the message names ``data.fold`` and the values it may take.
    """
    if isinstance(fold, str) and fold.strip().lower() == FOLD_ALL:
        return FOLD_ALL
    allowed = f"[0, {num_folds - 1}]" if num_folds else "0, 1, ..."
    if isinstance(fold, bool) or not str(fold).strip().isdigit():
        raise ValueError(
            f"data.fold={fold!r}: expected a fold number in {allowed}, or data.fold={FOLD_ALL} to train on every labelled case"
        )
    number = int(str(fold).strip())
    if num_folds is not None and not 0 <= number < num_folds:
        raise ValueError(
            f"data.fold={number} with data.num_folds={num_folds}: expected a fold in {allowed}, "
            f"or data.fold={FOLD_ALL} to train on every labelled case"
        )
    return number


def fold_all_split(case_ids: Sequence[str], folds: Sequence[dict]) -> tuple[list[str], list[str]]:
    """Training and validation cases of ``data.fold=all``: every case trains, and fold 0's validation
    cases are validated on (training cases here, so validation costs what one fold's does).

    Args:
        case_ids: every labelled case.
        folds: the splits (:func:`read_splits`); fold 0's ``val`` list is used.

    Returns:
        ``(train, val)``, each sorted; every ``val`` case is in ``train``.

    Raises:
        DataError: ``folds`` is empty.
    """
    if not folds:
        raise DataError("data.fold=all: the splits hold no fold to take the validation cases from")
    return sorted(case_ids), sorted(folds[0]["val"])


def write_fold_all_splits(path: str | Path, case_ids: Sequence[str], folds_path: str | Path) -> dict:
    """Write a fold-``all`` run's splits file to ``path`` (atomically): ``fold: "all"``, :data:`FOLD_ALL_NOTE`,
    the ``train`` and ``val`` lists of :func:`fold_all_split`, the file the folds came from (``folds_file``)
    and those folds (``folds``, with ``seed``, ``num_folds`` and ``cases`` where the file has them), so
    :func:`read_splits` still reads it.

    Args:
        path: where to write (the cache folder's ``<folds file>_all.json``).
        case_ids: every labelled case.
        folds_path: the folds (our ``splits_<k>folds_seed<seed>.json`` or a ``data.splits_file``).

    Returns:
        the record written.

    Raises:
        DataError: ``folds_path`` cannot be read as splits (see :func:`read_splits`) or holds no fold.
    """
    folds = read_splits(folds_path)
    stored = json.loads(Path(folds_path).read_text())
    train, val = fold_all_split(case_ids, folds)
    record = {"fold": FOLD_ALL, "note": FOLD_ALL_NOTE, "train": train, "val": val, "folds_file": str(folds_path)}
    if isinstance(stored, dict):
        record.update({k: v for k, v in stored.items() if k in ("seed", "num_folds", "cases")})
    record["folds"] = folds
    atomic_save(Path(path), lambda p: p.write_text(json.dumps(record, indent=1)))
    return record


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


def job_trained_on_every_case(job_dir: Path) -> bool:
    """Whether a multirun job trained with ``data.fold=all`` (nnU-Net's fold ``all``: no held-out case).

    Read from the job's composed config (``.hydra/config.yaml``, so a preset that sets the fold counts),
    or, where a job folder lacks it or its ``data.fold``, from its command-line overrides (``.hydra/overrides.yaml``).
    ``lightning-brats summarize`` leaves such jobs out of fold averages and ``predict.py run_dir=`` out
    of a fold ensemble.
    """
    import yaml

    hydra_dir = Path(job_dir) / ".hydra"
    try:
        if (hydra_dir / "config.yaml").is_file():
            group, key = FOLD_KEY.split(".")
            data = (yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}).get(group) or {}
            if key in data:
                return str(data[key]) == FOLD_ALL
        overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []
    except (OSError, AttributeError, yaml.YAMLError):
        return False
    return f"{FOLD_KEY}={FOLD_ALL}" in map(str, overrides)
