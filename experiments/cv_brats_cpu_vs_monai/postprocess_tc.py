"""Simple tumour-core (TC) post-processing rules applied to finished label maps, for scoring with eval.py.

Evaluation only: reads a folder of predict.py's ``<case>.nii.gz`` label maps (BraTS 2018-2020 codes: 1 NCR/NET,
2 ED, 4 ET; TC = {1, 4}, WT = {1, 2, 4}) and writes one folder per rule beside OUT, with the same headers:

- ``tc_minN``: TC components (26-connected) below N voxels become edema (2): WT is unchanged.
- ``ncr_minN``: NCR components (label 1 alone, 26-connected) below N voxels become edema: what the package's
  ``data.postprocess={region: tc, min_voxels: N}`` does (it would replace the ET rule, which a rule list would keep).
- ``tc_in_wt``: TC components that do not touch the largest WT component become edema (2).
- ``tc_largest``: only the largest TC component stays TC; the others become edema (2).
- ``tc_fill``: holes of the TC mask (3D ``binary_fill_holes``, then per axial slice) become NCR (1).

At 1 mm a voxel is 1 mm^3.
    python experiments/cv_brats_cpu_vs_monai/postprocess_tc.py PREDICTIONS OUT [--min 100 250 500 1000] [--ground-truth DATA]
With --ground-truth, a quick screen: the mean Dice per region of every rule (BraTS convention: both empty = 1), to
choose which folders eval.py and `compare` score in full.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from lightning_brats.data.labels import small_components_to

CONN = np.ones((3, 3, 3), dtype=bool)
NCR, ED, ET = 1, 2, 4


def tc_mask(label: np.ndarray) -> np.ndarray:
    return (label == NCR) | (label == ET)


def tc_min(label: np.ndarray, min_voxels: int) -> np.ndarray:
    """TC components below ``min_voxels`` voxels become edema."""
    comps, n = ndimage.label(tc_mask(label), structure=CONN)
    if n == 0:
        return label
    sizes = np.bincount(comps.ravel())
    small = np.flatnonzero(sizes < min_voxels)
    small = small[small > 0]
    out = label.copy()
    out[np.isin(comps, small)] = ED
    return out


def ncr_min(label: np.ndarray, min_voxels: int) -> np.ndarray:
    """NCR components (label 1 alone) below ``min_voxels`` voxels become edema (the package's own
    small-component rule, 26-connected, applied to NCR)."""
    return small_components_to(label, NCR, ED, min_voxels)[0]


def tc_in_wt(label: np.ndarray) -> np.ndarray:
    """TC components that do not touch the largest WT component become edema."""
    wt, n = ndimage.label(label > 0, structure=CONN)
    if n <= 1:
        return label
    largest = wt == (np.argmax(np.bincount(wt.ravel())[1:]) + 1)
    comps, _ = ndimage.label(tc_mask(label), structure=CONN)
    keep = np.unique(comps[largest & (comps > 0)])
    out = label.copy()
    out[(comps > 0) & ~np.isin(comps, keep)] = ED
    return out


def tc_largest(label: np.ndarray) -> np.ndarray:
    """Only the largest TC component stays TC; the others become edema."""
    comps, n = ndimage.label(tc_mask(label), structure=CONN)
    if n <= 1:
        return label
    biggest = np.argmax(np.bincount(comps.ravel())[1:]) + 1
    out = label.copy()
    out[(comps > 0) & (comps != biggest)] = ED
    return out


def tc_fill(label: np.ndarray) -> np.ndarray:
    """Holes of the TC mask (3D, then per axial slice) become NCR."""
    tc = tc_mask(label)
    filled = ndimage.binary_fill_holes(tc)
    for z in range(tc.shape[2]):
        filled[..., z] |= ndimage.binary_fill_holes(tc[..., z])
    out = label.copy()
    out[filled & ~tc] = NCR
    return out


def region_dice(label: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Dice of WT, TC, ET; both masks empty gives 1 (BraTS)."""
    out = []
    for codes in ((1, 2, 4), (1, 4), (4,)):
        a, b = np.isin(label, codes), np.isin(truth, codes)
        total = a.sum() + b.sum()
        out.append(1.0 if total == 0 else 2.0 * (a & b).sum() / total)
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument("out", type=Path, help="one subfolder per rule is written here")
    parser.add_argument("--min", type=int, nargs="*", default=[100, 250, 500, 1000], help="tc_minN sizes (voxels)")
    parser.add_argument("--ground-truth", type=Path, default=None, help="data root: print mean Dice per rule")
    args = parser.parse_args()
    rules = {f"tc_min{n}": (lambda lab, n=n: tc_min(lab, n)) for n in args.min}
    rules.update({f"ncr_min{n}": (lambda lab, n=n: ncr_min(lab, n)) for n in args.min})
    rules.update(tc_in_wt=tc_in_wt, tc_largest=tc_largest, tc_fill=tc_fill)
    files = sorted(p for p in args.predictions.glob("*.nii.gz") if not p.name.endswith("_probabilities.nii.gz"))
    changed = {name: 0 for name in rules}
    dice = {name: [] for name in ("none", *rules)}
    for path in files:
        image = nib.load(str(path))
        label = np.asarray(image.dataobj).astype(np.uint8)
        truth = None
        if args.ground_truth is not None:
            case = path.name[: -len(".nii.gz")]
            truth = np.asarray(nib.load(str(next((args.ground_truth / case).glob(f"{case}_seg.nii*")))).dataobj)
            dice["none"].append(region_dice(label, truth))
        for name, rule in rules.items():
            out = rule(label)
            changed[name] += int((out != label).sum())
            if truth is not None:
                dice[name].append(region_dice(out, truth))
            folder = args.out / name
            folder.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(out.astype(np.uint8), image.affine, image.header), str(folder / path.name))
    for name, n in changed.items():
        print(f"{name}: {n} voxels changed over {len(files)} cases")
    if args.ground_truth is not None:
        print("rule, mean Dice WT, TC, ET, mean of the three")
        for name, rows in dice.items():
            m = np.mean(rows, axis=0)
            print(f"{name}, {m[0]:.4f}, {m[1]:.4f}, {m[2]:.4f}, {m.mean():.4f}")


if __name__ == "__main__":
    main()
