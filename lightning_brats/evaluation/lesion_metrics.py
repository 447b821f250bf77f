"""Lesion-wise metrics of the BraTS 2023-2025 leaderboards, per region of one case.

Three definitions (``eval.py metrics=<definition>``; ``legacy`` is :mod:`lightning_brats.evaluation.metrics`):

``brats2023``
    The BraTS 2023 lesion-wise Dice and HD95 (R. Saluja et al., github.com/rachitsaluja/BraTS-2023-Metrics,
    ``metrics.py``; re-written here from its description, not copied). Per region:

    1. Ground-truth lesions: 26-connected components of the region; components that meet once the
       region is dilated (18-connected structuring element, ``dilation`` iterations) are one lesion.
    2. Each lesion, dilated the same way, collects every 26-connected predicted component it touches.
    3. The union of those components is scored against the undilated lesion: Dice and HD95 (mm,
       MONAI's ``compute_hausdorff_distance`` with the voxel spacing, through
       :func:`~lightning_brats.evaluation.metrics.case_region_metrics`); a lesion that collects nothing is a
       false negative with Dice 0 and HD95 ``hd95_penalty`` (374 mm).
    4. A predicted component collected by no lesion is a false positive: Dice 0, HD95 ``hd95_penalty``.
    5. Lesions of volume at or below ``min_volume`` (mm^3; voxels at 1 mm) are left out of the
       score and of the tp/fn counts. As in the official script (the issue text does not say), the
       predicted components such a small lesion collects are *not* false positives.
    6. Case score: Dice = sum over scored lesions / (scored lesions + false positives); HD95 the
       same with ``hd95_penalty`` per false positive; no scored lesion and no false positive gives
       Dice 1 and HD95 0.

    The official script computes HD95 with DeepMind's ``surface_distance``; MONAI's surface
    definition can differ from it by a fraction of a voxel on irregular shapes.

``brats2024``
    As 2023, plus the prediction handled like the ground truth (github.com/rachitsaluja/BraTS-2024-Metrics,
    ``BraTS_SegMetrics/processing.py``): predicted components that meet under the dilation form one
    predicted unit, and units of volume at or below the region's ``min_volume`` are removed before
    matching; false positives are counted per unit. With ``lesion_wise.merge_across`` (BraTS 2024
    GLI), ground-truth lesions are also merged *across* tissues as ``metrics_GLI.py`` does
    (:func:`cross_region_lesions`): lesions of a region that touch the same lesion of a partner region
    (e.g. two NETC lesions touching one ET lesion) are one lesion. The official script thresholds predicted units by voxel count and lesions by
    mm^3; both use mm^3 here (the same at the 1 mm BraTS grid).

``brats2025``
    BraTS-Lighthouse 2025 through ``panoptica`` (github.com/BrainLesion/panoptica, MIT), configured
    as the challenge's ``BraTS-evaluation`` package configures it (``config_gli.yaml`` and siblings):
    semantic input, connected-component instances, one-to-one maximum bipartite matching on Dice
    (any overlap, threshold 1e-6), Dice and HD95 per matched pair, and the challenge's edge cases
    (no true positive: Dice 0, HD95 infinite; neither prediction nor ground truth has an instance:
    NaN). Reported as ``brats-parse-metrics seg`` does: lesion-wise Dice and HD95 = means over
    matched pairs (``sq_dsc``, ``sq_hd95``), tp/fp/fn, precision, recall and F1 (``rq``), an
    infinite HD95 replaced by 373 mm.

    Not done: the metastasis parser's small/large split (``brats-parse-metrics mets``,
    BraTS/BraTS_evaluation ``metrics_parser.py``). It is public: reference instances of volume at or
    above ``--vol_threshold`` are large, the others small; lesion-wise Dice/HD95 are means over the
    large ones (unmatched: Dice 0, HD95 373) plus every false positive (Dice 0, HD95 373), NaN where
    no large reference lesion exists; small lesions count for detection only (matched with Dice at or
    above ``--overlap_threshold``: true positive, otherwise false negative), giving ``small_instance``
    and ``large_instance`` tp/fp/fn, precision, recall and F1. It needs panoptica's per-reference-
    instance volume, match flag and Dice, which the evaluator here does not return, and the
    thresholds the leaderboard used are not settled in public: the README's example uses 20 and 0.1
    (the CLI defaults), the package's own MET notebook 27 and 0.2.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from lightning_brats.evaluation import registry as metric_registry
from lightning_brats.evaluation.metrics import case_region_metrics
from lightning_brats.evaluation.registry import DEFINITIONS  # noqa: F401  (what ``eval.py metrics=`` accepts)

#: Per-region lesion-wise metrics of ``brats2023``/``brats2024``: column prefixes of ``metrics.csv``,
#: declared (with unit, direction and label) in :mod:`lightning_brats.evaluation.registry`.
LESION_METRICS = metric_registry.lesion_wise("brats2023")
#: ``brats2025`` adds panoptica's detection scores (precision, recall, F1).
PANOPTIC_METRICS = metric_registry.lesion_wise("brats2025")
#: The definitions that need the data config's ``evaluation.lesion_wise`` (dilation, min_volume, hd95_penalty).
NEEDS_SETTINGS = ("brats2023", "brats2024")
#: HD95 (mm) the BraTS-Lighthouse 2025 parser writes for an infinite distance.
PANOPTIC_HD95_INF_MM = 373.0
#: 18-connected structuring element of the 2023+ dilation (faces and edges, not corners).
DILATION_STRUCTURE = ndimage.generate_binary_structure(3, 2)


def metric_names(definition: str) -> tuple[str, ...]:
    """The per-region lesion-wise metrics a definition adds to the legacy ones (none for ``legacy``),
    as the registry declares them (:func:`~lightning_brats.evaluation.registry.lesion_wise`).

    Raises:
        ValueError: ``definition`` is not one of :data:`DEFINITIONS`.
    """
    return metric_registry.lesion_wise(definition)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a binary ``(X, Y, Z)`` mask: labels 1..n (``connected-components-3d``,
    about ten times faster than ``scipy.ndimage.label`` on a 240 x 240 x 155 case)."""
    import cc3d

    labels, count = cc3d.connected_components(np.ascontiguousarray(mask, dtype=bool), connectivity=26, return_N=True)
    return labels, int(count)


def _pad(box: tuple[slice, ...], pad: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, shape))


def dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``iterations`` 18-connected binary dilations of a ``(X, Y, Z)`` mask, computed in its padded
    bounding box only (the same result as over the whole volume, in milliseconds instead of a second)."""
    mask = np.asarray(mask, dtype=bool)
    if iterations <= 0 or not mask.any():
        return mask.copy()
    box = _pad(ndimage.find_objects(mask.astype(np.uint8))[0], iterations, mask.shape)
    out = np.zeros_like(mask)
    out[box] = ndimage.binary_dilation(mask[box], DILATION_STRUCTURE, iterations=iterations)
    return out


def merged_lesions(mask: np.ndarray, dilation: int) -> tuple[np.ndarray, int]:
    """Lesions of a binary ``(X, Y, Z)`` mask: its voxels labelled by the 26-connected component of
    the dilated mask they lie in, so components closer than the dilation reach are one lesion.

    Returns:
        ``(labels, n)``: int labels 1..n on the mask's voxels, 0 elsewhere.
    """
    grouped, count = components(dilate(mask, dilation))
    return np.where(mask, grouped, 0), count


def touching_pairs(labels: np.ndarray, other: np.ndarray) -> set[tuple[int, int]]:
    """Pairs ``(a, b)`` of a label of ``labels`` and a label of ``other`` (both ``(X, Y, Z)`` int maps,
    0 background) whose voxels touch: ``b`` meets ``a`` grown by one 18-connected dilation (the
    official ``get_touching_labels``; the test is symmetric, so one direction suffices)."""
    pairs: set[tuple[int, int]] = set()
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        reach = _pad(box, 1, labels.shape)
        touched = np.unique(other[reach][dilate(labels[reach] == label, 1)])
        pairs.update((label, int(t)) for t in touched if t != 0)
    return pairs


def merge_touching(labels: np.ndarray, pairs: set[tuple[int, int]]) -> np.ndarray:
    """Relabel ``labels`` so that its labels touching the same partner label share one label, as the
    official ``relabel_nifti_image`` does: each partner label gets a new label (above those in use,
    in the order of the sorted pairs) and each label takes that of the *first* partner it touches in
    sorted order (a label touching partners 1 and 2 joins 1's group only). Labels touching nothing
    keep theirs."""
    if not pairs:
        return labels
    top = int(labels.max())
    group: dict[int, int] = {}
    for _, partner in sorted(pairs):
        group.setdefault(partner, top + 1 + len(group))
    lut = np.arange(top + 1 + len(group), dtype=np.int64)
    assigned: set[int] = set()
    for label, partner in sorted(pairs):
        if label not in assigned:
            lut[label] = group[partner]
            assigned.add(label)
    return lut[labels]


def cross_region_lesions(
    truth: np.ndarray,
    regions: Mapping[str, Sequence[int]],
    region: str,
    partners: Sequence[str],
    dilation: int,
) -> tuple[np.ndarray, int]:
    """Ground-truth lesions of ``region`` merged across tissues, the BraTS 2024 GLI rule.

    Follows ``combine_lesions_tissues`` of rachitsaluja/BraTS-2024-Metrics ``metrics_GLI.py``
    (re-written from its reading): the region's lesions (:func:`merged_lesions`) are merged, for each
    partner region in turn, where they touch the same lesion of that partner (the partner's own
    :func:`merged_lesions`, not merged across tissues); the official order per region is NETC by ET
    then RC, ET by NETC then RC, RC by ET then NETC, SNFH by ET, RC then NETC. Only the ground truth is
    merged, as in the official GLI script. See :func:`merge_touching` for how a lesion touching two
    partner lesions is grouped.

    Args:
        truth: ``(X, Y, Z)`` ground-truth label map (release codes).
        regions: region name -> label codes; must hold ``region`` and every partner.
        region: the region whose lesions are returned.
        partners: partner regions, in the order the merges are applied.
        dilation: iterations of the 18-connected dilation of :func:`merged_lesions`.

    Returns:
        ``(labels, n)``: lesion labels 1..n on the region's voxels, 0 elsewhere.
    """
    lesions, _ = merged_lesions(np.isin(truth, regions[region]), dilation)
    for partner in partners:
        other, _ = merged_lesions(np.isin(truth, regions[partner]), dilation)
        lesions = merge_touching(lesions, touching_pairs(lesions, other))
    used = np.unique(lesions)
    used = used[used != 0]
    lut = np.zeros(int(lesions.max()) + 1, dtype=np.int32)
    lut[used] = np.arange(1, used.size + 1)
    return lut[lesions], int(used.size)


def lesion_wise_scores(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    *,
    dilation: int,
    min_volume: float,
    hd95_penalty: float,
    remove_small_predictions: bool = False,
    lesions: tuple[np.ndarray, int] | None = None,
) -> dict[str, float]:
    """BraTS 2023 (or, with ``remove_small_predictions``, 2024) lesion-wise scores of one region.

    Args:
        prediction: ``(X, Y, Z)`` binary predicted region.
        truth: ``(X, Y, Z)`` binary ground-truth region, same shape.
        spacing: voxel size in mm (HD95 in mm, volumes in mm^3).
        dilation: iterations of the 18-connected dilation that merges lesions and collects predictions.
        min_volume: mm^3; ground-truth lesions at or below it are left out (2024: also predicted units).
        hd95_penalty: HD95 (mm) of a missed lesion and of a false positive (374 in BraTS 2023/2024).
        remove_small_predictions: the 2024 rule (see the module docstring).
        lesions: the ground-truth lesions ``(labels 1..n on truth's voxels, n)`` when not
            :func:`merged_lesions` of ``truth`` (e.g. :func:`cross_region_lesions`).

    Returns:
        ``{"lesionwise_dice", "lesionwise_hd95" (mm), "lesionwise_tp", "lesionwise_fp", "lesionwise_fn"}``;
        the counts are ints.

    Raises:
        ValueError: the shapes differ or the masks are not 3D.
    """
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape or truth.ndim != 3:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} must be the same 3D shape")
    voxel_mm3 = float(np.prod(spacing))
    lesions, n_lesions = merged_lesions(truth, dilation) if lesions is None else lesions
    if remove_small_predictions:
        units, n_units = merged_lesions(prediction, dilation)
        keep = np.bincount(units.ravel(), minlength=n_units + 1) * voxel_mm3 > min_volume
        keep[0] = False
        units = np.where(keep[units], units, 0)
    else:
        units, n_units = components(prediction)
    unit_boxes = ndimage.find_objects(units, max_label=n_units)
    lesion_volumes = np.bincount(lesions.ravel(), minlength=n_lesions + 1) * voxel_mm3
    collected: set[int] = set()
    dice, hd95, tp, fn = [], [], 0, 0
    for label, box in enumerate(ndimage.find_objects(lesions, max_label=n_lesions), start=1):
        reach = _pad(box, dilation, truth.shape)
        near = dilate(lesions[reach] == label, dilation)
        touched = np.unique(units[reach][near])
        touched = touched[touched != 0]
        collected.update(int(t) for t in touched)
        if lesion_volumes[label] <= min_volume:
            continue
        if touched.size == 0:
            fn += 1
            dice.append(0.0)
            hd95.append(float(hd95_penalty))
            continue
        tp += 1
        # score in the box holding the lesion and every collected component (1 voxel margin for surfaces)
        boxes = [box, *(unit_boxes[t - 1] for t in touched)]
        crop = _pad(tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)), 1, truth.shape)
        scores = case_region_metrics(np.isin(units[crop], touched), lesions[crop] == label, spacing)
        dice.append(float(scores["dice"]))
        hd95.append(float(scores["hd95"]))
    fp = sum(1 for label, box in enumerate(unit_boxes, start=1) if box is not None and label not in collected)
    scored = len(dice) + fp
    return {
        "lesionwise_dice": sum(dice) / scored if scored else 1.0,
        "lesionwise_hd95": (sum(hd95) + fp * float(hd95_penalty)) / scored if scored else 0.0,
        "lesionwise_tp": tp,
        "lesionwise_fp": fp,
        "lesionwise_fn": fn,
    }


@functools.lru_cache(maxsize=8)
def panoptica_evaluator(regions: tuple[tuple[str, tuple[int, ...]], ...]):
    """The BraTS-Lighthouse 2025 ``panoptica.Panoptica_Evaluator`` for these regions (name, label codes):
    a region of one code is a ``LabelGroup``, of several a ``LabelMergeGroup``, as in ``config_gli.yaml``.

    Raises:
        ImportError: panoptica is not installed (``pip install -e ".[metrics2025]"``).
    """
    try:
        from panoptica import (
            ConnectedComponentsInstanceApproximator,
            InputType,
            MaxBipartiteMatching,
            Metric,
            Panoptica_Evaluator,
        )
        from panoptica.utils.citation_reminder import disable_citation_reminder
        from panoptica.utils.edge_case_handling import (
            EdgeCaseHandler,
            EdgeCaseResult,
            MetricZeroTPEdgeCaseHandling,
        )
        from panoptica.utils.label_group import LabelGroup, LabelMergeGroup
        from panoptica.utils.segmentation_class import SegmentationClassGroups
    except ImportError as exc:
        raise ImportError('metrics=brats2025 needs panoptica: pip install -e ".[metrics2025]"') from exc
    disable_citation_reminder()

    def zero_tp(result):
        return MetricZeroTPEdgeCaseHandling(
            empty_prediction_result=result, empty_reference_result=result,
            no_instances_result=EdgeCaseResult.NAN, normal=result,
        )

    groups = {name: (LabelMergeGroup if len(codes) > 1 else LabelGroup)(list(codes)) for name, codes in regions}
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a notice for nested regions (WT holds TC)
        groups = SegmentationClassGroups(groups)
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=MaxBipartiteMatching(matching_metric=Metric.DSC, matching_threshold=1e-6),
        edge_case_handler=EdgeCaseHandler(
            listmetric_zeroTP_handling={Metric.DSC: zero_tp(EdgeCaseResult.ZERO), Metric.HD95: zero_tp(EdgeCaseResult.INF)},
            empty_list_std=EdgeCaseResult.NAN,
        ),
        segmentation_class_groups=groups,
        instance_metrics=[Metric.DSC, Metric.HD95],
        global_metrics=[Metric.DSC, Metric.HD95],
    )


def panoptic_scores(
    prediction: np.ndarray, truth: np.ndarray, regions: Mapping[str, Sequence[int]], spacing: Sequence[float]
) -> dict[str, float]:
    """BraTS-Lighthouse 2025 scores of one case for every region, through panoptica.

    Args:
        prediction: ``(X, Y, Z)`` predicted label map (release codes).
        truth: ``(X, Y, Z)`` ground-truth label map, same grid.
        regions: region name -> label codes.
        spacing: voxel size in mm.

    Returns:
        ``{"<metric>_<region>": value}`` for every metric of :data:`PANOPTIC_METRICS`; Dice and HD95
        are NaN where neither map has an instance of the region (the challenge's convention).
    """
    codes = sorted({int(c) for region in regions.values() for c in region})
    # labels outside every region are not scored (panoptica refuses labels it has no group for)
    prediction, truth = (np.where(np.isin(a, codes), a, 0).astype(np.int32) for a in (prediction, truth))
    evaluator = panoptica_evaluator(tuple((str(r), tuple(int(c) for c in v)) for r, v in regions.items()))
    results = evaluator.evaluate(prediction, truth, voxelspacing=tuple(float(s) for s in spacing), verbose=False)
    row = {}
    for region, result in results.items():
        # to_dict() leaves out what panoptica cannot compute (recall without reference instances):
        # NaN then, as in the challenge's parser
        values = {k: float(v) for k, v in result.to_dict().items() if isinstance(v, (int, float))}
        hd95 = values.get("sq_hd95", math.nan)
        row.update({
            f"lesionwise_dice_{region}": values.get("sq_dsc", math.nan),
            f"lesionwise_hd95_{region}": PANOPTIC_HD95_INF_MM if math.isinf(hd95) else hd95,
            f"lesionwise_tp_{region}": int(result.tp),
            f"lesionwise_fp_{region}": int(result.fp),
            f"lesionwise_fn_{region}": int(result.fn),
            f"lesionwise_precision_{region}": values.get("prec", math.nan),
            f"lesionwise_recall_{region}": values.get("rec", math.nan),
            f"lesionwise_f1_{region}": values.get("rq", math.nan),
        })
    return row


def check_settings(definition: str, settings: Mapping | None, regions: Mapping[str, Sequence[int]]) -> None:
    """Check that a definition has what it needs: ``brats2023``/``brats2024`` the data config's
    ``evaluation.lesion_wise`` with ``dilation``, ``hd95_penalty`` and a ``min_volume`` per region.

    Raises:
        ValueError: unknown definition, or settings missing, naming the override that adds them.
    """
    metric_names(definition)  # an unknown definition is an error
    if definition not in NEEDS_SETTINGS:
        return
    if not settings or any(k not in settings for k in ("dilation", "min_volume", "hd95_penalty")):
        raise ValueError(
            f"metrics={definition} needs data.release.evaluation.lesion_wise with dilation, min_volume and hd95_penalty "
            f"(got {settings}); use a data config that has them (brats20, brats23) or add them with "
            "+data.release.evaluation.lesion_wise='{dilation: 3, min_volume: {wt: 50, tc: 50, et: 50}, hd95_penalty: 374}'"
        )
    missing = [r for r in regions if r not in settings["min_volume"]]
    if missing:
        raise ValueError(
            f"data.release.evaluation.lesion_wise.min_volume has no value for regions {missing} (it has {dict(settings['min_volume'])})"
        )
    for region, partners in (settings.get("merge_across") or {}).items():
        unknown = [r for r in (region, *partners) if r not in regions]
        if unknown:
            raise ValueError(
                f"data.release.evaluation.lesion_wise.merge_across.{region}={list(partners)} names regions {unknown} that are "
                f"not scored (the scored regions are {list(regions)})"
            )


def score_lesion_wise(
    prediction: np.ndarray,
    truth: np.ndarray,
    regions: Mapping[str, Sequence[int]],
    spacing: Sequence[float],
    definition: str,
    settings: Mapping | None = None,
) -> dict[str, float]:
    """Lesion-wise scores of one case for every region under a definition.

    Args:
        prediction: ``(X, Y, Z)`` predicted label map (release codes).
        truth: ``(X, Y, Z)`` ground-truth label map, same grid.
        regions: region name -> label codes.
        spacing: voxel size in mm.
        definition: one of :data:`DEFINITIONS` (``legacy`` returns nothing).
        settings: the data config's ``evaluation.lesion_wise`` (``dilation``, ``min_volume`` per
            region, ``hd95_penalty``, optionally ``merge_across``: region -> partner regions of
            :func:`cross_region_lesions`); needed by ``brats2023`` and ``brats2024``.

    Returns:
        ``{"<metric>_<region>": value}`` for every metric of :func:`metric_names`.

    Raises:
        ValueError: unknown definition, or settings missing / lacking a region's ``min_volume``.
    """
    check_settings(definition, settings, regions)
    if not metric_names(definition):
        return {}
    if definition == "brats2025":
        return panoptic_scores(prediction, truth, regions, spacing)
    row = {}
    merge_across = settings.get("merge_across") or {}
    dilation = int(settings["dilation"])
    for region, codes in regions.items():
        lesions = None
        if region in merge_across:
            lesions = cross_region_lesions(truth, regions, region, merge_across[region], dilation)
        scores = lesion_wise_scores(
            np.isin(prediction, codes), np.isin(truth, codes), spacing,
            dilation=dilation, min_volume=float(settings["min_volume"][region]),
            hd95_penalty=float(settings["hd95_penalty"]), remove_small_predictions=definition == "brats2024",
            lesions=lesions,
        )
        row.update({f"{metric}_{region}": value for metric, value in scores.items()})
    return row
