"""Between a release's label codes and nested regions, both ways, and BraTS post-processing.

Training predicts one sigmoid output per region (e.g. WT, TC, ET); a submission needs the
release's labels (1/2/4 for BraTS 2018-2021, 1/2/3 for 2023+, MSD's own codes). The regions of
every supported release nest (ET inside TC inside WT), so the label of a voxel is the code that
its innermost region adds: WT without TC is edema, TC without ET is necrosis, ET is ET. This is
read from ``data.regions`` and ``data.labels``, not written per release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage


def nested_region_codes(regions: Mapping[str, Sequence[int]]) -> list[tuple[str, int]]:
    """The label code each region adds to the one enclosing it, outermost region first.

    Args:
        regions: region name -> label codes, e.g. ``{"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}``.

    Returns:
        ``[(region, code), ...]`` from the outermost region in, e.g.
        ``[("wt", 2), ("tc", 1), ("et", 4)]``.

    Raises:
        ValueError: the regions do not nest, or a region adds more than one code, so that a
            region mask cannot say which label a voxel has.
    """
    ordered = sorted(regions.items(), key=lambda kv: -len(kv[1]))
    result = []
    for (name, codes), inner in zip(ordered, [*ordered[1:], (None, [])]):
        outer_set, inner_set = set(codes), set(inner[1])
        added = sorted(outer_set - inner_set)
        if not inner_set <= outer_set or len(added) != 1:
            raise ValueError(
                f"data.regions={dict(regions)} cannot be turned back into labels: each region must contain the "
                f"next and add exactly one code ({name} {sorted(outer_set)} vs {inner[0]} {sorted(inner_set)})"
            )
        result.append((name, added[0]))
    return result


def regions_to_labels(masks: np.ndarray, regions: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Turn binary region masks into a label map, enforcing nesting (ET inside TC inside WT).

    Each inner region is cut to the one enclosing it before painting, as nnU-Net's and NVIDIA's
    BraTS entries do, so a stray inner-region voxel outside its parent becomes background.

    Args:
        masks: ``(R, X, Y, Z)`` binary masks in the order of ``regions``.
        regions: region name -> label codes (see :func:`nested_region_codes`).

    Returns:
        ``(X, Y, Z)`` uint8 label map with the release's codes.

    Raises:
        ValueError: the regions do not determine labels, or ``masks`` has the wrong channel count.
    """
    names = list(regions)
    if masks.shape[0] != len(names):
        raise ValueError(f"{masks.shape[0]} masks for {len(names)} regions {names}")
    label = np.zeros(masks.shape[1:], dtype=np.uint8)
    inside = np.ones(masks.shape[1:], dtype=bool)
    for name, code in nested_region_codes(regions):
        inside &= masks[names.index(name)].astype(bool)
        label[inside] = code
    return label


def small_components_to(label: np.ndarray, code: int, replacement: int, min_voxels: int) -> tuple[np.ndarray, int]:
    """Relabel connected components of ``code`` smaller than ``min_voxels`` as ``replacement``.

    The BraTS 2020/2021 post-processing of enhancing tumour (e.g. Isensee et al. 2021, "nnU-Net
    for brain tumor segmentation"; Futrega et al. 2021, NVIDIA): small ET islands are mostly false
    positives, and a case with no true ET scores Dice 1 only if no ET is predicted.
    Components use 26-connectivity (``scipy.ndimage.label``).

    Args:
        label: ``(X, Y, Z)`` label map.
        code: the label to check (ET: 4, or 3 from 2023).
        replacement: the label small components get (NCR: 1).
        min_voxels: components with fewer voxels are replaced.

    Returns:
        ``(new label map, voxels replaced)``.
    """
    components, count = ndimage.label(label == code, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return label, 0
    sizes = np.bincount(components.ravel())
    small = np.flatnonzero(sizes < min_voxels)
    small = small[small > 0]
    mask = np.isin(components, small)
    out = label.copy()
    out[mask] = replacement
    return out, int(mask.sum())
