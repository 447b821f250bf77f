"""Between a release's label codes and its regions, both ways, and BraTS post-processing.

Training predicts one sigmoid output per region (e.g. WT, TC, ET); a submission needs the
release's labels (1/2/4 for BraTS 2018-2021, 1/2/3 for 2023+, MSD's own codes). Regions form a
forest: any two are nested or disjoint (ET inside TC inside WT; the 2024 post-treatment resection
cavity RC beside WT; the paediatric cyst CC beside ET inside TC; a single GTV), and each region
adds exactly one code to those of the regions inside it. The label of a voxel is then the code of
the innermost region holding it: WT without TC is edema, TC without ET is necrosis, ET is ET, RC is
RC. This is read from ``data.regions`` and ``data.labels``, not written per release.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class RegionNode:
    """One region of a release's region forest.

    Attributes:
        name: the region's name in ``data.regions`` (e.g. ``"tc"``).
        code: the label code the region adds to the regions inside it (TC: NCR's code).
        parent: the smallest region containing it, or ``None`` for an outermost region.
    """

    name: str
    code: int
    parent: str | None


def region_tree(regions: Mapping[str, Sequence[int]]) -> list[RegionNode]:
    """The forest of ``regions``, each region before the regions inside it.

    Regions are ordered by decreasing number of codes (ties keep ``regions``' order), so a
    parent always precedes its children.

    Args:
        regions: region name -> label codes, e.g. ``{"wt": [1, 2, 3], "tc": [1, 3], "et": [3], "rc": [4]}``.

    Returns:
        one :class:`RegionNode` per region, e.g. ``wt`` adds 2, ``tc`` (in ``wt``) adds 1,
        ``et`` (in ``tc``) adds 3, ``rc`` (outermost) adds 4.

    Raises:
        ValueError: a region set whose masks cannot be turned back into labels: a region
            without codes, two regions with the same codes, two regions that overlap without
            one containing the other, or a region that adds no code or several codes to the
            regions inside it (the message names the regions and how to fix them).
    """
    sets = {str(name): frozenset(int(c) for c in codes) for name, codes in regions.items()}
    problem = None
    names = list(sets)
    for i, a in enumerate(names):
        if not sets[a]:
            problem = f"region {a} has no label codes"
        for b in names[i + 1:]:
            if sets[a] == sets[b]:
                problem = f"regions {a} and {b} have the same codes {sorted(sets[a])}"
            elif sets[a] & sets[b] and not (sets[a] < sets[b] or sets[b] < sets[a]):
                problem = (
                    f"regions {a} {sorted(sets[a])} and {b} {sorted(sets[b])} overlap but neither contains the other"
                )
        if problem:
            break
    ordered = sorted(names, key=lambda n: -len(sets[n]))
    nodes = []
    if problem is None:
        for name in ordered:
            parents = [p for p in ordered if sets[name] < sets[p]]
            parent = min(parents, key=lambda p: len(sets[p])) if parents else None
            children = [c for c in ordered if sets[c] < sets[name]]
            added = sorted(sets[name].difference(*[sets[c] for c in children]))
            if len(added) != 1:
                inner = ", ".join(f"{c} {sorted(sets[c])}" for c in children)
                problem = (
                    f"region {name} {sorted(sets[name])} adds {'no code' if not added else f'the codes {added}'} "
                    f"to the regions inside it ({inner}); add a region per extra code"
                )
                break
            nodes.append(RegionNode(name, added[0], parent))
    if problem is not None:
        raise ValueError(
            f"data.regions={ {k: sorted(v) for k, v in sets.items()} } cannot be turned back into labels: {problem}. "
            "Regions must be nested or disjoint, each adding exactly one code to the regions inside it"
        )
    return nodes


def nested_region_codes(regions: Mapping[str, Sequence[int]]) -> list[tuple[str, int]]:
    """The label code each region adds to the regions inside it, outermost regions first.

    Args:
        regions: region name -> label codes, e.g. ``{"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}``.

    Returns:
        ``[(region, code), ...]`` in :func:`region_tree` order, e.g.
        ``[("wt", 2), ("tc", 1), ("et", 4)]``.

    Raises:
        ValueError: see :func:`region_tree`.
    """
    return [(node.name, node.code) for node in region_tree(regions)]


def labels_to_regions(label: np.ndarray, regions: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Convert a label map to one binary mask per region (the training targets).

    A voxel belongs to a region when its code is one of the region's codes, so nested regions
    overlap (a BraTS ET voxel is also in TC and WT). :func:`regions_to_labels` is the inverse.

    Args:
        label: ``(...)`` integer label map (e.g. BraTS codes 1, 2, 4).
        regions: region name -> label codes, e.g. ``{"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}``.

    Returns:
        ``(R, ...)`` float32 masks in the order of ``regions``.
    """
    return np.stack([np.isin(label, list(codes)) for codes in regions.values()]).astype(np.float32)


def regions_to_labels(masks: np.ndarray, regions: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Turn binary region masks into a label map, enforcing the region forest.

    A voxel gets the code of the innermost region reached by walking down the forest: an
    outermost region holding it, then a region inside that one holding it, and so on. Each
    region is thereby cut to the one enclosing it, as nnU-Net's and NVIDIA's BraTS entries do
    (a stray ET voxel outside TC becomes background). Where disjoint regions with the same
    parent (RC beside WT, CC beside ET) both claim a voxel, the one listed later in
    ``regions`` wins, as later regions overwrite earlier ones in nnU-Net's
    ``regions_class_order``. For label maps whose codes all belong to some region, this is
    the inverse of :func:`labels_to_regions`.

    Args:
        masks: ``(R, X, Y, Z)`` binary masks in the order of ``regions``.
        regions: region name -> label codes (see :func:`region_tree`).

    Returns:
        ``(X, Y, Z)`` uint8 label map with the release's codes.

    Raises:
        ValueError: the regions do not determine labels, or ``masks`` has the wrong channel count.
    """
    names = list(regions)
    if masks.shape[0] != len(names):
        raise ValueError(f"{masks.shape[0]} masks for {len(names)} regions {names}")
    nodes = region_tree(regions)
    binary = {name: masks[i].astype(bool) for i, name in enumerate(names)}
    label = np.zeros(masks.shape[1:], dtype=np.uint8)
    reached: dict[str, np.ndarray] = {}
    for node in nodes:  # parents before children
        inside = binary[node.name] & (reached[node.parent] if node.parent else True)
        for sibling in nodes:  # later siblings in data.regions take the voxels they claim
            if sibling.parent == node.parent and names.index(sibling.name) > names.index(node.name):
                inside &= ~binary[sibling.name]
        reached[node.name] = inside
        label[inside] = node.code
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
    return _components_to(label, label == code, replacement, lambda sizes: np.flatnonzero(sizes < min_voxels))


def all_but_largest_component_to(label: np.ndarray, codes: Sequence[int], replacement: int) -> tuple[np.ndarray, int]:
    """Keep the largest connected component of a region; every other component becomes ``replacement``.

    nnU-Net's ``remove_all_but_largest_component`` (Isensee et al. 2021, ``nnunetv2/postprocessing``),
    applied to one region: with the BraTS tumour core (codes NCR and ET) it removes distant false
    core islands, whose voxels then take the label of the region around the core (edema). A
    component keeps every code in it, so a kept core keeps its ET. Components use 26-connectivity
    (``scipy.ndimage.label``); of two largest components of equal size the first in scan order stays.

    Args:
        label: ``(X, Y, Z)`` label map.
        codes: the label codes that make the region (TC: ``[1, 4]`` up to 2021).
        replacement: the label of the voxels removed (ED: 2; 0 for an outermost region).

    Returns:
        ``(new label map, voxels replaced)``.
    """
    return _components_to(label, np.isin(label, list(codes)), replacement, lambda sizes: np.delete(np.arange(len(sizes)), np.argmax(sizes)))


def _components_to(
    label: np.ndarray, mask: np.ndarray, replacement: int, chosen: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, int]:
    """Relabel the 26-connected components of ``mask`` that ``chosen`` picks as ``replacement``.

    Args:
        label: ``(X, Y, Z)`` label map.
        mask: ``(X, Y, Z)`` bool, the voxels whose components are considered.
        replacement: the label the chosen components' voxels get.
        chosen: the components' sizes in voxels ``(N,)`` (scan order) -> the indices of those to relabel.

    Returns:
        ``(new label map, voxels replaced)``; ``label`` itself when nothing is replaced.
    """
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return label, 0
    ids = np.asarray(chosen(np.bincount(components.ravel())[1:]), dtype=np.int64) + 1
    if ids.size == 0:
        return label, 0
    replaced = np.isin(components, ids)
    out = label.copy()
    out[replaced] = replacement
    return out, int(replaced.sum())
