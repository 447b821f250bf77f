"""Synthetic BraTS-like phantoms, so that ``python train.py`` runs with no download.

Each case is a brain-shaped head (ellipsoidal brain with white matter, grey matter and
ventricles, inside a skull-stripped field of view) with one tumour: a necrotic core
(label 1), an enhancing rim bright on T1ce (label 4) and edema bright on FLAIR/T2
(label 2), with a smooth irregular outline, a bias field and Rician-like noise. Cases are
written as int16/uint8 NIfTI in the BraTS 2020 layout, so they go through the real reader.
They are synthetic: a model trained on them says nothing about real MRI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from lightning_brats.data.readers import BratsFolderReader

#: Mean intensity per tissue and modality (arbitrary scanner units): background, CSF, GM,
#: WM, edema, necrosis, enhancing tumour. Contrasts follow the textbook appearance.
TISSUE_INTENSITY = {
    #          bg   CSF   GM    WM    ED    NCR   ET
    "flair": [0, 250, 700, 600, 1300, 500, 1050],
    "t1": [0, 300, 650, 850, 550, 350, 650],
    "t1ce": [0, 320, 680, 880, 580, 380, 1600],
    "t2": [0, 1600, 900, 650, 1350, 1500, 1000],
}
_CSF, _GM, _WM, _ED, _NCR, _ET = 1, 2, 3, 4, 5, 6


def _ellipsoid(grid: Sequence[np.ndarray], center, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii))


def _smooth_noise(shape, rng, scale: int = 8) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: coarse random grid, trilinear upsampling."""
    import torch
    import torch.nn.functional as F

    coarse = torch.from_numpy(rng.standard_normal([max(2, s // scale) for s in shape]).astype(np.float32))
    return F.interpolate(coarse[None, None], size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()


def make_phantom(shape: Sequence[int], rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One synthetic case.

    Args:
        shape: ``(X, Y, Z)`` voxels.
        rng: random generator (fixes the case).

    Returns:
        ``({modality: (X, Y, Z) int16}, label (X, Y, Z) uint8)`` with BraTS codes 1, 2, 4.
    """
    shape = tuple(int(s) for s in shape)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    center = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    radii = np.array(shape) * np.array([0.36, 0.42, 0.40]) * rng.uniform(0.92, 1.05, 3)
    wobble = 0.06 * _smooth_noise(shape, rng, scale=12)
    brain = _ellipsoid(grid, center, radii) + wobble
    tissue = np.zeros(shape, np.uint8)
    tissue[brain < 1] = _GM
    tissue[brain < 0.55] = _WM
    for side in (-1, 1):  # lateral ventricles
        vc = center + np.array([side * radii[0] * 0.18, radii[1] * 0.05, radii[2] * 0.1])
        tissue[_ellipsoid(grid, vc, radii * np.array([0.1, 0.35, 0.18])) < 1] = _CSF
    # Tumour: a centre in one hemisphere, irregular nested shells.
    t_center = center + rng.uniform(-1, 1, 3) * radii * np.array([0.35, 0.35, 0.3])
    t_center[0] = center[0] + rng.choice([-1, 1]) * rng.uniform(0.25, 0.45) * radii[0]
    size = rng.uniform(0.16, 0.28) * radii.mean()
    t_dist = np.sqrt(_ellipsoid(grid, t_center, size * rng.uniform(0.8, 1.2, 3))) * (1 + 0.2 * _smooth_noise(shape, rng, 6))
    inside = brain < 1
    label = np.zeros(shape, np.uint8)
    label[(t_dist < 2.0) & inside] = 2  # edema
    label[(t_dist < 1.0) & inside] = 4  # enhancing rim
    label[(t_dist < rng.uniform(0.45, 0.7)) & inside] = 1  # necrotic core
    tissue[label == 2] = _ED
    tissue[label == 4] = _ET
    tissue[label == 1] = _NCR
    bias = 1 + 0.1 * _smooth_noise(shape, rng, scale=16)
    images = {}
    for modality, means in TISSUE_INTENSITY.items():
        mean = np.asarray(means, np.float32)[tissue] * rng.uniform(0.9, 1.1)
        texture = 1 + 0.08 * rng.standard_normal(shape).astype(np.float32)
        value = np.abs(mean * texture * bias + 25 * rng.standard_normal(shape).astype(np.float32))
        value[~inside] = 0  # skull-stripped
        images[modality] = np.round(value).astype(np.int16)
    return images, label


def write_phantom_dataset(
    root: str | Path,
    num_cases: int = 16,
    shape: Sequence[int] = (96, 96, 72),
    spacing_mm: float = 2.0,
    seed: int = 0,
    prefix: str = "BraTS20_Training_",
    layout: BratsFolderReader | None = None,
) -> list[Path]:
    """Write a deterministic synthetic dataset in the BraTS 2020 layout.

    Each case goes to ``root/<prefix><NNN>/<prefix><NNN>_{flair,t1,t1ce,t2,seg}.nii.gz`` and
    is written in a temporary folder first, then renamed, so an interrupted run leaves no
    half case. Existing cases are kept.

    Args:
        root: output folder.
        num_cases: number of cases.
        shape: ``(X, Y, Z)`` voxels per case.
        spacing_mm: isotropic voxel size written in the header (mm).
        seed: case ``i`` uses seed ``(seed, i)``.
        prefix: case-ID prefix.
        layout: the file-name suffixes (default: BraTS 2020's).

    Returns:
        the case folders.
    """
    layout = layout or BratsFolderReader({m: f"_{m}" for m in TISSUE_INTENSITY})
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-spacing_mm, -spacing_mm, spacing_mm, 1.0])
    folders = []
    print(f"Writing {num_cases} synthetic phantom cases to {root} (these are NOT real MRI)")
    for i in range(1, num_cases + 1):
        case_id = f"{prefix}{i:03d}"
        folder = root / case_id
        folders.append(folder)
        if folder.exists():
            continue
        images, label = make_phantom(shape, np.random.default_rng((seed, i)))
        tmp = Path(tempfile.mkdtemp(prefix=f".{case_id}-", dir=root))
        try:
            for modality, array in images.items():
                nib.save(nib.Nifti1Image(array, affine), tmp / f"{case_id}{layout.modality_suffixes[modality]}.nii.gz")
            nib.save(nib.Nifti1Image(label, affine), tmp / f"{case_id}{layout.label_suffix}.nii.gz")
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folders
