"""Training samples: random 3D patches or 2D axial slices with foreground oversampling.

Foreground oversampling follows nnU-Net (Isensee et al. 2021, ``nnUNetDataLoader``): in
each batch of ``B`` samples the last ``B - round(B * (1 - p))`` are centred on a tumour voxel,
the others are placed uniformly at random. Which tumour voxel is ``foreground_sampling``'s
choice (:data:`FOREGROUND_SAMPLING`): any one, uniformly (``voxel``), or a class first, uniformly
among those the case holds, then a voxel of it, as nnU-Net does (``label``: per label code, as
nnU-Net v1's loaders; ``region``: per region, as nnU-Net v2's region-based training,
``nnUNetDataLoaderBase.get_bbox``). Balancing by class centres more samples on the small tumour
core and enhancing tumour than uniform voxels, most of which are edema. Every sample's
randomness comes from ``(seed, epoch, index)``, so an epoch is reproducible whatever the number
of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from lightning_brats.data.context import (
    check_context,
    per_modality,
    slices_per_modality,
    stack_axial,
    stack_slice,
)
from lightning_brats.data.intensity_augment import (
    IntensityAugmentation,
    IntensityProbabilities,
    intensity_seed,
)
from lightning_brats.data.labels import labels_to_regions
from lightning_brats.data.preprocess import CachedCase


def crop_or_pad(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Extract ``array[..., start:start+size]`` over the trailing axes, zero-padding outside.

    Args:
        array: ``(C, *spatial)`` (a memory map is fine: only the window is read).
        start: window start per spatial axis (voxels; may be negative or run past the end).
        size: window size per spatial axis (voxels).

    Returns:
        ``(C, *size)`` array of ``array``'s dtype.
    """
    spatial = array.shape[1:]
    out = np.zeros((array.shape[0], *size), dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s, n, length in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + n, length)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def patch_start(
    shape: Sequence[int], size: Sequence[int], rng: np.random.Generator, center: Sequence[int] | None = None
) -> list[int]:
    """Start of a window of ``size`` in a volume of ``shape``: random, or centred on ``center``.

    The start stays in ``[min(0, n - s), max(0, n - s)]`` per axis (as nnU-Net clips its
    boxes), so a window never leaves more padding than the volume forces, and a centred
    window still contains ``center``.
    """
    starts = []
    for axis, (n, s) in enumerate(zip(shape, size)):
        lo, hi = min(0, n - s), max(0, n - s)
        start = int(rng.integers(lo, hi + 1)) if center is None else int(center[axis]) - s // 2
        starts.append(int(np.clip(start, lo, hi)))
    return starts


#: ``data.foreground_sampling`` options: how an oversampled sample picks its tumour voxel (see the module's docstring).
FOREGROUND_SAMPLING = ("voxel", "label", "region")


def foreground_voxels(
    label: np.ndarray | None, max_voxels: int = 20000, seed: int = 0, codes: Sequence[int] | None = None
) -> np.ndarray:
    """Coordinates of tumour (non-zero label) voxels, subsampled to at most ``max_voxels``.

    Args:
        label: ``(x, y, z)`` label map, or ``None`` (an unlabelled case).
        max_voxels: at most this many coordinates are kept (a random subset, drawn with ``seed``).
        seed: the subset's seed.
        codes: only voxels whose label is one of these codes (e.g. a region's); ``None``: every
            non-zero label.

    Returns:
        ``(N, 3)`` voxel coordinates, int16 (int32 for axes of 32768 voxels or more): the index is kept
        for every training case for the whole run, so 6 bytes per voxel rather than argwhere's 24
        keep memory nearly flat as the dataset grows (experiments/benchmarks/README.md, memory);
        ``N = 0`` for a case with no tumour or no labels.
    """
    if label is None:
        return np.zeros((0, 3), dtype=np.int16)
    label = np.asarray(label)
    coords = np.argwhere(label > 0 if codes is None else np.isin(label, list(codes)))
    if len(coords) > max_voxels:
        coords = coords[np.random.default_rng(seed).choice(len(coords), max_voxels, replace=False)]
    return coords.astype(np.int16 if max(label.shape) < 2**15 else np.int32)


def foreground_classes(
    label: np.ndarray | None, mode: str, regions: Mapping[str, Sequence[int]], seed: int = 0
) -> list[np.ndarray]:
    """The tumour voxels an oversampled sample may be centred on, one array per class the case holds.

    Args:
        label: ``(x, y, z)`` label map, or ``None``.
        mode: one of :data:`FOREGROUND_SAMPLING`: ``voxel``, one class (every tumour voxel); ``label``,
            one class per non-zero label code present (nnU-Net v1's class locations); ``region``, one per
            region present (``regions``' codes, nnU-Net v2's ``foreground_regions``).
        regions: region name -> label codes.
        seed: the subsets' seed (each class keeps at most 20000 voxels, :func:`foreground_voxels`).

    Returns:
        ``(N_c, 3)`` voxel coordinates per class, classes without a voxel left out (an empty list for a
        case without tumour).

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in FOREGROUND_SAMPLING:
        raise ValueError(f"data.foreground_sampling={mode!r}: expected one of {list(FOREGROUND_SAMPLING)}")
    if label is None:
        return []
    if mode == "voxel":
        classes = [foreground_voxels(label, seed=seed)]
    elif mode == "label":
        codes = [int(c) for c in np.unique(np.asarray(label)) if c != 0]
        classes = [foreground_voxels(label, seed=seed, codes=[c]) for c in codes]
    else:
        classes = [foreground_voxels(label, seed=seed, codes=codes) for codes in regions.values()]
    return [c for c in classes if len(c)]


def slice_foreground_fractions(label: np.ndarray) -> np.ndarray:
    """Share of tumour (non-zero) voxels in each axial slice.

    Args:
        label: ``(x, y, z)`` label map.

    Returns:
        ``(z,)`` float64 fractions in [0, 1].
    """
    label = np.asarray(label)
    return np.count_nonzero(label, axis=(0, 1)) / float(label.shape[0] * label.shape[1])


class EpochSampler(DistributedSampler):
    """Yields ``(epoch, index)`` keys for :class:`TrainingSampleDataset`, a new epoch per pass.

    One epoch's keys are ``(epoch, 0) ... (epoch, samples_per_epoch - 1)`` over all processes:
    process ``rank`` of ``num_replicas`` yields the indices ``rank, rank + num_replicas, ...``
    in order, so with a per-process batch of ``B / num_replicas`` step ``k`` of every process
    takes its share of global batch ``k`` (indices ``kB ... kB + B - 1``, nnU-Net's
    oversampling positions intact), no two processes draw the same sample, and together they
    draw exactly the samples of a single-process run.

    A ``DistributedSampler`` (unshuffled, no padding), so that Lightning leaves it in place
    under DDP instead of wrapping it in its ``DistributedSamplerWrapper``, which shuffles the
    keys across the epoch and would mix the global batches. Lightning calls :meth:`set_epoch`
    with its epoch counter before every training epoch (also after a resume), so the keys follow
    the trainer's epoch; outside Lightning each pass moves on to the next epoch by itself.

    Args:
        samples_per_epoch: samples per epoch, all processes together.
        num_replicas: processes sharing the epoch.
        rank: this process's global rank.
        epoch: the epoch of the first pass.

    Raises:
        ValueError: ``samples_per_epoch`` is not divisible by ``num_replicas`` (there is no
            padding, which would draw samples twice), or ``rank`` is outside ``[0, num_replicas)``.
    """

    def __init__(self, samples_per_epoch: int, num_replicas: int = 1, rank: int = 0, epoch: int = 0) -> None:
        if samples_per_epoch % num_replicas:
            raise ValueError(f"{samples_per_epoch} samples per epoch cannot be shared evenly by {num_replicas} processes")
        super().__init__(range(samples_per_epoch), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.samples_per_epoch = samples_per_epoch
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        self.epoch += 1
        return iter([(epoch, i) for i in range(self.rank, self.samples_per_epoch, self.num_replicas)])

    def __len__(self) -> int:
        return self.num_samples  # this process's share

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])


class TrainingSampleDataset(Dataset):
    """Random training samples drawn from preprocessed cases.

    Args:
        cases: the training cases (image ``(C, x, y, z)``, label ``(x, y, z)``); 2D slices are read from
            a case's slice-major copies (:attr:`CachedCase.axial <lightning_brats.data.preprocess.CachedCase.axial>`,
            ``axial_label``) when it has them: the same voxels at a sixth of the CPU.
        regions: region name -> label codes (see :func:`~lightning_brats.data.labels.labels_to_regions`).
        patch_size: ``(px, py, pz)`` for 3D patches or ``(px, py)`` for 2D axial slices (voxels).
        batch_size: the batch size, which fixes the oversampled positions in each batch.
        oversample_foreground: fraction ``p`` of each batch centred on a tumour voxel.
        foreground_sampling: how that voxel is chosen (:data:`FOREGROUND_SAMPLING`, :func:`foreground_classes`):
            ``voxel``, any tumour voxel uniformly; ``label`` or ``region``, a label code or region first,
            uniformly among those the case holds (nnU-Net), then one of its voxels.
        augment: the training augmentation (see :class:`Augmentation`), or ``None``; one with
            ``device="batch"`` is left to the batch on the training device (not applied here).
        seed: base seed.
        min_foreground_fraction: leave out cases (3D) or axial slices (2D) whose share of
            tumour voxels is below this (the filter of many BraTS notebooks); ``None`` or 0
            keeps all. :attr:`dropped` says how many were left out.
        context_slices: ``k``, 2D only: each slice's image holds the ``2k + 1`` slices ``z - k ... z + k`` of
            every modality (:mod:`lightning_brats.data.context`: modality-major, border slices repeated);
            the target stays slice ``z``'s. 0: plain 2D.

    Raises:
        ValueError: a ``patch_size`` of neither 2 nor 3 values; the filter leaves nothing; ``context_slices``
            above 0 with 3D patches (:func:`~lightning_brats.data.context.check_context`); an unknown
            ``foreground_sampling``.

    Items (keyed by ``(epoch, index)`` from :class:`EpochSampler`) are dicts with
    ``image`` ``(C, *patch_size)`` (``C`` = modalities x ``(2k + 1)``) float32 (also from a float16 cache), ``target`` ``(R, *patch_size)`` float32,
    ``key`` ``(2,)`` int64, the ``(epoch, index)`` that drew the sample, and ``case_id`` (str),
    the case the sample was cut from (a batch holds a list of them; messages about a batch name them).
    With ``augment.device == "batch"`` and uint8 labels (the cache's) an item holds ``label``
    ``(1, *patch_size)`` uint8 instead of ``target``, and ``image`` in the cache's dtype: the data module
    augments both on the training device and makes the targets there
    (:meth:`SegmentationDataModule.augment_batch <lightning_brats.data.datamodule.SegmentationDataModule.augment_batch>`),
    so a sample crosses to the device as ``C + 1/4`` (float32 cache) float32 volumes instead of ``C + R``.
    """

    def __init__(
        self,
        cases: Sequence[CachedCase],
        regions: Mapping[str, Sequence[int]],
        patch_size: Sequence[int],
        batch_size: int,
        oversample_foreground: float = 0.33,
        augment: Augmentation | None = None,
        seed: int = 0,
        min_foreground_fraction: float | None = None,
        context_slices: int = 0,
        foreground_sampling: str = "voxel",
    ) -> None:
        if len(patch_size) not in (2, 3):
            raise ValueError(f"patch_size must have 2 (2D) or 3 (3D) values, got {list(patch_size)}")
        self.context_slices = check_context(context_slices, f"{len(patch_size)}d")
        self.regions = dict(regions)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = batch_size
        self.oversample_foreground = oversample_foreground
        self.augment = augment
        self.seed = seed
        self.cases, self.slices, self.dropped = self._select(list(cases), float(min_foreground_fraction or 0))
        self.foreground_sampling = foreground_sampling
        #: per case, the voxels of each class an oversampled sample may be centred on (:func:`foreground_classes`)
        self.foreground = [foreground_classes(c.label, foreground_sampling, self.regions, seed) for c in self.cases]
        # the targets of every uint8 code, (R, 256), from labels_to_regions itself: one np.take per sample
        # gives its result for the cache's uint8 labels at about 60 % of its CPU (3 np.isin, stack, cast)
        self.region_table = labels_to_regions(np.arange(256, dtype=np.uint8), self.regions)
        if len(self.patch_size) == 2:  # only tumour voxels on kept slices may centre a slice
            self.foreground = [
                [c for c in (fg[np.isin(fg[:, 2], kept)] for fg in classes) if len(c)]
                for classes, kept in zip(self.foreground, self.slices)
            ]

    def _select(self, cases: list[CachedCase], minimum: float) -> tuple[list[CachedCase], list[np.ndarray], str]:
        """Apply ``min_foreground_fraction``: the kept cases, their kept slice indices, a summary."""
        slices = [np.arange(c.image.shape[3]) for c in cases]
        if minimum <= 0:
            return cases, slices, ""
        if len(self.patch_size) == 3:
            kept = [i for i, c in enumerate(cases) if np.count_nonzero(c.label) / c.label.size >= minimum]
            summary = f"dropped {len(cases) - len(kept)} of {len(cases)} training cases"
        else:
            slices = [np.flatnonzero(slice_foreground_fractions(c.label) >= minimum) for c in cases]
            kept = [i for i, s in enumerate(slices) if len(s)]
            total = sum(c.image.shape[3] for c in cases)
            remaining = sum(len(s) for s in slices)
            summary = (
                f"dropped {total - remaining} of {total} training slices "
                f"({len(cases) - len(kept)} of {len(cases)} cases left with none)"
            )
        if not kept:
            raise ValueError(f"data.min_foreground_fraction={minimum} leaves no training data ({summary})")
        return [cases[i] for i in kept], [slices[i] for i in kept], summary

    def is_oversampled(self, index: int) -> bool:
        """Whether sample ``index`` is forced onto a tumour voxel (nnU-Net's rule, per batch)."""
        return index % self.batch_size >= round(self.batch_size * (1 - self.oversample_foreground))

    def _foreground_center(self, case_index: int, rng: np.random.Generator) -> np.ndarray | None:
        """A tumour voxel of case ``case_index``: a class uniformly, then one of its voxels; ``None`` without one.

        With ``voxel`` sampling there is one class and no draw for it, so the random stream is the one of
        the code before ``data.foreground_sampling`` existed.
        """
        classes = self.foreground[case_index]
        if not classes:
            return None
        voxels = classes[0] if len(classes) == 1 else classes[int(rng.integers(len(classes)))]
        return voxels[rng.integers(len(voxels))].astype(np.int64)

    def __len__(self) -> int:  # the sampler decides the epoch length
        return 0

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key
        rng = np.random.default_rng((self.seed, epoch, index))
        case_index = int(rng.integers(len(self.cases)))
        case = self.cases[case_index]
        center = self._foreground_center(case_index, rng) if self.is_oversampled(index) else None
        if len(self.patch_size) == 3:
            start = patch_start(case.image.shape[1:], self.patch_size, rng, center)
            image = crop_or_pad(case.image, start, self.patch_size)
            label = crop_or_pad(case.label[None], start, self.patch_size)[0]
        else:
            slices = self.slices[case_index]
            z = int(center[2]) if center is not None else int(slices[rng.integers(len(slices))])
            start = patch_start(case.image.shape[1:3], self.patch_size, rng, None if center is None else center[:2])
            # the slice-major copies hold the slice in one block; image[..., z] reads across the whole volume
            k = self.context_slices
            image = stack_slice(case.image, z, k) if case.axial is None else stack_axial(case.axial, z, k)
            image = crop_or_pad(image, start, self.patch_size)
            label = case.label[None, ..., z] if case.axial_label is None else case.axial_label[z : z + 1]
            label = crop_or_pad(label, start, self.patch_size)[0]
        on_device = self.augment is not None and self.augment.device == "batch"
        if on_device and label.dtype == np.uint8:  # the batch path augments the label map on the device and
            # makes the targets there: 1 byte per voxel crosses to the device instead of R float32 targets' 4 R
            return {
                "image": torch.from_numpy(np.ascontiguousarray(image)),  # the cache's dtype, float32 on the device
                "label": torch.from_numpy(np.ascontiguousarray(label[None])),
                "key": torch.tensor([epoch, index], dtype=torch.int64),
                "case_id": case.case_id,
            }
        image = image.astype(np.float32, copy=False)  # a float16 cache (data.cache_dtype) reads back as float32
        augment = self.augment is not None and self.augment.device == "cpu"
        if label.dtype == np.uint8:
            if augment:  # move the one-channel label map, not R region targets: nearest resampling and flips
                # pick the same source voxel for every channel (zero padding is background), so the targets
                # equal those of augmenting the targets themselves, at a third of the resampling's target work
                image, moved = self.augment(image, label[None].astype(np.float32), rng, self.context_slices)
                label = moved[0].astype(np.uint8)
            target = np.take(self.region_table, label, axis=1)  # == labels_to_regions(label, self.regions)
        else:
            target = labels_to_regions(label, self.regions)
            if augment:
                image, target = self.augment(image, target, rng, self.context_slices)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "target": torch.from_numpy(np.ascontiguousarray(target)),
            "key": torch.tensor([epoch, index], dtype=torch.int64),
            "case_id": case.case_id,
        }


#: ``data.augment.device`` options: per sample in the dataset (``cpu``) or per batch on the training device (``batch``).
AUGMENT_DEVICES = ("cpu", "batch")


@dataclass(frozen=True)
class Augmentation(IntensityProbabilities):
    """Training-time augmentation, as in nnU-Net and MONAI's BraTS tutorial.

    Attributes:
        flip: flip each spatial axis with probability 0.5.
        intensity: with probability 0.5 each, scale channels by ``U(0.9, 1.1)`` and shift them by
            ``U(-0.1, 0.1)`` (independently per modality, the same for its neighbouring slices with
            ``data.context_slices``; z-scored units).
        spatial_prob: probability of a random rotation and scaling of the sample
            (MONAI ``RandAffine``'s draws and ``Affine``'s resampling: trilinear image, nearest-neighbour
            target, zero padding; computed by the batch path's ``grid_sample``).
        rotate_deg: rotation range in degrees, ``U(-r, r)`` about each axis (about the slice
            normal only in 2D).
        scale: relative scaling range, ``1 + U(-s, s)`` per axis.
        elastic_prob: probability of an elastic deformation, applied before the rotation and scaling in the
            same resampling (:func:`~lightning_brats.data.batch_augment.elastic_displacement`: batchgenerators'
            ``elastic_deform_coordinates_2``, as in the nnU-Net BraTS 2020 entry, "DA3", p 0.3). 0 (the
            default) is off, as in nnU-Net v2's default set.
        elastic_scale: ``(low, high)``: the deformation's Gaussian width as a fraction of the patch size,
            ``U(low, high)`` (DA3: ``(0, 0.25)``); each axis's largest offset is ``U(sigma_a / 8, sigma_a / 2)``
            voxels with ``sigma_a`` the width on that axis (up to 16 voxels on a 128^3 patch).
        device: ``"cpu"``: each sample is augmented in the dataset (in the loader workers);
            ``"batch"``: the dataset leaves samples alone and the same transforms run on whole
            batches on the training device (:class:`~lightning_brats.data.batch_augment.BatchAugmentation`).
        noise_prob, blur_prob, brightness_prob, contrast_prob, low_res_prob, inverted_gamma_prob, gamma_prob:
            probabilities per sample of nnU-Net's intensity augmentations, applied after the above, inherited
            with their defaults from :class:`~lightning_brats.data.intensity_augment.IntensityProbabilities`
            (0 switches one off; ``augment=nnunet`` sets nnU-Net's). When all are 0 the sample's random stream is
            the same as without them.

    Raises:
        ValueError: an unknown ``device``; a probability outside ``[0, 1]``; an ``elastic_scale`` that is not
            ``[low, high]`` with ``0 <= low <= high``.
    """

    flip: bool = True
    intensity: bool = True
    spatial_prob: float = 0.2
    rotate_deg: float = 15.0
    scale: float = 0.15
    elastic_prob: float = 0.0
    elastic_scale: tuple[float, float] = (0.0, 0.25)
    device: str = "cpu"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.device not in AUGMENT_DEVICES:
            raise ValueError(f"data.augment.device={self.device!r}: expected one of {list(AUGMENT_DEVICES)}")
        from lightning_brats.data.batch_augment import elastic_range

        # a config list -> a float pair
        object.__setattr__(self, "elastic_scale", elastic_range(self.elastic_prob, self.elastic_scale))
        _ = self.intensity_set  # built once here (it validates the probabilities), then reused for every sample

    @cached_property
    def intensity_set(self) -> IntensityAugmentation:
        """nnU-Net's intensity augmentations with this object's probabilities."""
        return IntensityAugmentation.from_settings(self.settings())

    def settings(self) -> dict:
        """The fields as a mapping, e.g. ``{"flip": True, ..., "gamma_prob": 0.0}`` (``data.augment``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def batch_settings(self) -> dict:
        """The arguments of :class:`~lightning_brats.data.batch_augment.BatchAugmentation` for the same transforms."""
        return {k: v for k, v in self.settings().items() if k != "device"}

    def draw(self, rng: np.random.Generator, channels: int, dims: int) -> dict:
        """Draw one sample's parameters (the same distributions as
        :meth:`BatchAugmentation.draw <lightning_brats.data.batch_augment.BatchAugmentation.draw>`).

        Returns:
            ``spatial`` bool, ``angles`` ``(1 | 3,)`` radians, ``scales`` ``(dims,)``, ``flips`` ``(dims,)`` bool,
            ``factors`` ``(C,)`` or ``None``, ``shifts`` ``(C,)`` or ``None`` (``None``: not applied); with
            ``elastic_prob > 0`` also ``elastic`` bool and, where drawn, ``elastic_scale``,
            ``elastic_magnitude`` ``(dims,)`` (fractions of ``sigma_a`` in ``[1/8, 1/2]``) and ``elastic_seed``
            (its noise's torch seed), drawn last so the other draws do not change.
        """
        params: dict = {"spatial": self.spatial_prob > 0 and rng.random() < self.spatial_prob}
        if params["spatial"]:  # MONAI RandAffineGrid: U(-r, r) per angle, 1 + U(-s, s) per axis
            angle = np.deg2rad(self.rotate_deg)
            params["angles"] = rng.uniform(-angle, angle, 1 if dims == 2 else 3)
            params["scales"] = 1.0 + rng.uniform(-self.scale, self.scale, dims)
        params["flips"] = np.array([self.flip and rng.random() < 0.5 for _ in range(dims)], dtype=bool)
        params["factors"] = rng.uniform(0.9, 1.1, channels) if self.intensity and rng.random() < 0.5 else None
        params["shifts"] = rng.uniform(-0.1, 0.1, channels) if self.intensity and rng.random() < 0.5 else None
        if self.elastic_prob > 0:
            params["elastic"] = bool(rng.random() < self.elastic_prob)
            if params["elastic"]:
                params["elastic_scale"] = rng.uniform(*self.elastic_scale)
                params["elastic_magnitude"] = rng.uniform(1 / 8, 1 / 2, dims)
                params["elastic_seed"] = intensity_seed(rng)
        return params

    def __call__(
        self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator, context_slices: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one sample: ``image (C, *spatial)`` and ``target (R, *spatial)``, float32.

        With ``context_slices = k`` (2D) ``image`` holds ``2k + 1`` neighbouring slices per modality
        (:mod:`lightning_brats.data.context`): they move with the same spatial transform as every channel
        does, and share their modality's intensity draws (scale, shift, nnU-Net's set), so the neighbours
        differ from the centre slice only as the anatomy does. The draws are per modality, so ``k`` does
        not change the random stream.
        """
        slices = slices_per_modality(context_slices)
        params = self.draw(rng, image.shape[0] // slices, image.ndim - 1)
        if params["spatial"] or params.get("elastic"):
            image, target = self._resample(image, target, params)
        for axis, flip in enumerate(params["flips"], start=1):
            if flip:
                image, target = np.flip(image, axis), np.flip(target, axis)
        channels = (image.shape[0],) + (1,) * (image.ndim - 1)
        intensity = self.intensity_set
        outside = None  # the background, set back to 0 after nnU-Net's set
        if intensity.enabled:
            outside = IntensityAugmentation.background(torch.from_numpy(np.ascontiguousarray(image))[None], slices)
        if params["factors"] is not None:
            image = image * per_modality(params["factors"], context_slices, 0).astype(np.float32).reshape(channels)
        if params["shifts"] is not None:
            image = image + per_modality(params["shifts"], context_slices, 0).astype(np.float32).reshape(channels)
        if intensity.enabled:  # nnU-Net's set, the batch path's code on a batch of one
            generator = torch.Generator().manual_seed(intensity_seed(rng))
            image = intensity(torch.from_numpy(np.ascontiguousarray(image))[None], generator, outside, slices)[0].numpy()
        return image, target

    def _resample(self, image: np.ndarray, target: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
        """Rotate and scale and/or elastically deform one sample with the batch path's code (one
        ``grid_sample`` grid for image and target), which resamples as MONAI's ``Affine`` does
        (``test_batch_affine_resamples_as_monai_affine``: images within 1e-4, nearest-neighbour targets but
        for rare ties), faster than MONAI's, which builds the grid twice and wraps every call in metadata
        handling (timings: experiments/benchmarks/README.md)."""
        from lightning_brats.data.batch_augment import (
            affine_grid,
            elastic_displacement,
            elastic_grid_offsets,
            elastic_magnitudes,
            resample,
            rotation_matrices,
        )

        spatial = tuple(image.shape[1:])
        dims = len(spatial)
        if params["spatial"]:
            matrices = rotation_matrices(torch.tensor(params["angles"], dtype=torch.float32)[None])
            matrices = matrices @ torch.diag_embed(torch.tensor(params["scales"], dtype=torch.float32)[None])
        else:
            matrices = torch.eye(dims)[None]
        grid = affine_grid(matrices, spatial)
        if params.get("elastic"):
            drawn = {"elastic_scale": torch.tensor([params["elastic_scale"]], dtype=torch.float32),
                     "elastic_magnitude": torch.tensor(params["elastic_magnitude"], dtype=torch.float32)[None]}
            generator = torch.Generator().manual_seed(params["elastic_seed"])
            voxels = elastic_displacement(drawn["elastic_scale"], elastic_magnitudes(drawn, spatial), spatial, generator)
            grid = grid + elastic_grid_offsets(voxels, matrices)
        image = resample(torch.from_numpy(np.ascontiguousarray(image))[None], grid, "bilinear")[0]
        target = resample(torch.from_numpy(np.ascontiguousarray(target))[None], grid, "nearest")[0]
        return image.numpy(), target.numpy()
