"""Training input pipeline: samples per second delivered to the model, ours against MONAI, TorchIO
and nnU-Net's batchgeneratorsv2, on the same cached real cases, patches, batches and augmentations.

Usage:
    python experiments/benchmarks/input_pipeline.py --root ../shared/data/brats2018 [--cases 4]
        [--dims 3 2] [--workers 0 1 2] [--batches 6] [--csv experiments/benchmarks/input_pipeline.csv]
    python experiments/benchmarks/input_pipeline.py --tiny ...   # seconds: 2 cases at 3 mm, small patches

Every pipeline reads the same preprocessed cases (our cache: non-zero crop, z-score per modality;
:class:`~lightning_brats.data.preprocess.PreprocessedCache`) and yields batches of
``image (B, 4, *patch)`` and ``target (B, 3, *patch)`` (WT, TC, ET) with foreground oversampling
0.33, flips (p 0.5 per axis), intensity scale ``U(0.9, 1.1)`` and shift ``U(-0.1, 0.1)`` (p 0.5
each) and a random rotation (+-15 deg) and scaling (+-15 %) with p 0.2:

- ``ours``: :class:`~lightning_brats.data.sampling.TrainingSampleDataset` (memory-mapped cache,
  per-sample CPU augmentation) in a ``DataLoader``.
- ``ours-batch``: the same samples un-augmented (label maps, not targets), then
  :class:`~lightning_brats.data.batch_augment.BatchAugmentation` on each batch in the main process and the
  targets made from the augmented label maps (on a GPU it would run there; here on the CPU).
- ``monai``: ``CacheDataset`` (cases in memory, padded to the patch, with ``FgBgToIndicesd``; ``copy_cache=False``) +
  ``RandCropByPosNegLabeld`` (pos 0.33, neg 0.67) +
  ``RandFlipd`` x3 + ``RandScaleIntensityd`` + ``RandShiftIntensityd`` + ``RandAffined`` +
  ``ConvertToMultiChannelBasedOnBratsClassesd``.
- ``torchio`` (optional): ``SubjectsDataset`` (cases in memory, padded to the patch) + ``RandomFlip`` + ``RandomAffine`` (p 0.2) + the
  intensity change as a ``Lambda``, sampled by ``Queue`` + ``LabelSampler`` (0.33 tumour); TorchIO
  transforms whole subjects, then cuts ``samples_per_volume`` patches from each.
- ``bgv2`` (optional): nnU-Net v2's per-sample transforms from batchgeneratorsv2 (``SpatialTransform``
  wrapped in ``RandomTransform(p=0.2)``, ``MirrorTransform``, ``MultiplicativeBrightnessTransform``,
  ``BrightnessAdditiveTransform`` (Gaussian, sigma 0.058 = the std of U(-0.1, 0.1)),
  ``ConvertSegmentationToRegionsTransform``) on patches cut with nnU-Net's oversampling rule (our
  sampler's), in a ``DataLoader`` (nnU-Net runs them in batchgenerators' background workers).

Workers are ``DataLoader`` workers (TorchIO: the ``Queue``'s); 0 means the main process does the
work. Each worker and the main process use one torch thread. Prints a rich table and writes a CSV.
TorchIO and batchgeneratorsv2 come with ``pip install -e ".[bench]"``; a pipeline whose library is
missing is reported as missing, not timed.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, report  # the shared machine line, table and CSV writer

from lightning_brats.data.batch_augment import BatchAugmentation, label_regions, region_table
from lightning_brats.data.labels import labels_to_regions
from lightning_brats.data.preprocess import CachedCase, PreprocessedCache
from lightning_brats.data.readers import BratsFolderReader
from lightning_brats.data.sampling import (
    Augmentation,
    EpochSampler,
    TrainingSampleDataset,
    crop_or_pad,
    foreground_voxels,
    patch_start,
)
from lightning_brats.data.settings import PreprocessingSettings

MODALITIES = ["flair", "t1", "t1ce", "t2"]
LABELS = {"ncr_net": 1, "ed": 2, "et": 4}
REGIONS = {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}
LAYOUT = BratsFolderReader({"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2"}, "_seg", [".nii.gz", ".nii"])
OVERSAMPLE, SPATIAL_PROB, ROTATE_DEG, SCALE = 0.33, 0.2, 15.0, 0.15
PEERS = ("ours", "ours-batch", "monai", "torchio", "bgv2")


def load_cases(root: str | Path, count: int, cache_dir: str | Path, spacing: Sequence[float] | None,
               axial_copy: bool = False) -> list[CachedCase]:
    """The first ``count`` cases under ``root`` (sorted), preprocessed into our cache once and memory-mapped;
    ``axial_copy``: with the slice-major copy our 2D training reads (as the data module keeps for 2D)."""
    files = sorted(LAYOUT.find_cases(Path(root)), key=lambda c: c.case_id)[:count]
    settings = PreprocessingSettings(tuple(MODALITIES), None if spacing is None else tuple(spacing))
    cache = PreprocessedCache(cache_dir, Path(root).resolve().name, settings, LABELS, axial_copy=axial_copy)
    cache.ensure(files)
    return [cache.load(f.case_id) for f in files]


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)


def ours(cases, patch, batch, workers, device_augment: bool = False) -> tuple[Iterable, list[str]]:
    augment = Augmentation(spatial_prob=SPATIAL_PROB, rotate_deg=ROTATE_DEG, scale=SCALE, device="batch" if device_augment else "cpu")
    dataset = TrainingSampleDataset(cases, REGIONS, patch, batch, OVERSAMPLE, augment, seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=EpochSampler(10**4), num_workers=workers,
                        worker_init_fn=_one_thread, persistent_workers=workers > 0, drop_last=True)
    if not device_augment:
        return loader, [c.case_id for c in dataset.cases]
    on_device = BatchAugmentation(spatial_prob=SPATIAL_PROB, rotate_deg=ROTATE_DEG, scale=SCALE)
    generator = torch.Generator().manual_seed(0)
    table = region_table(dataset.region_table, "cpu")

    def batches():  # as SegmentationDataModule.augment_batch: the label map is augmented, then made targets
        for b in loader:
            image = b["image"].float()
            if "label" in b:
                b["image"], label = on_device(image, b.pop("label"), generator)
                b["target"] = label_regions(label, table)
            else:
                b["image"], b["target"] = on_device(image, b["target"], generator)
            yield b

    return batches(), [c.case_id for c in dataset.cases]


def monai_pipeline(cases, patch, batch, workers) -> tuple[Iterable, list[str]]:
    from monai import transforms as mt
    from monai.data import CacheDataset
    from monai.data import DataLoader as MonaiLoader

    keys = ["image", "label"]
    dims = len(patch)
    crop = list(patch) if dims == 3 else [*patch, 1]
    steps = [
        mt.EnsureTyped(keys=keys, track_meta=False),
        mt.SpatialPadd(keys=keys, spatial_size=crop),  # cached: a crop larger than the case needs padding
        # cached too, as MONAI's docs advise: the foreground/background voxel indices of each case
        mt.FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg"),
        mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=crop, pos=OVERSAMPLE, neg=1 - OVERSAMPLE,
                                  num_samples=1, fg_indices_key="label_fg", bg_indices_key="label_bg"),
    ]
    if dims == 2:
        steps.append(mt.SqueezeDimd(keys=keys, dim=-1))
    angle = math.radians(ROTATE_DEG)
    steps += [
        *[mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(dims)],
        mt.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5, channel_wise=True),
        mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5, channel_wise=True),
        mt.RandAffined(keys=keys, prob=SPATIAL_PROB, rotate_range=(angle,) if dims == 2 else (angle,) * 3,
                       scale_range=(SCALE,) * dims, mode=("bilinear", "nearest"), padding_mode="zeros"),
    ]
    if dims == 2:  # the converter drops a channel axis of 1 only from 3D labels
        steps.append(mt.SqueezeDimd(keys="label", dim=0))
    steps += [
        mt.ConvertToMultiChannelBasedOnBratsClassesd(keys="label"),  # TC, WT, ET
        mt.Lambdad(keys="label", func=lambda x: x[[1, 0, 2]]),  # WT, TC, ET as ours
    ]
    data = [{"image": np.array(c.image), "label": np.array(c.label[None]), "case_id": c.case_id} for c in cases]
    # copy_cache=False, as MONAI's docs advise when the random transforms leave the cache alone (ours crop first,
    # then flip, scale and resample copies): the default deep-copies the whole case, indices included, per sample
    dataset = CacheDataset(data, mt.Compose(steps).set_random_state(0), cache_rate=1.0, num_workers=1, progress=False,
                           copy_cache=False)
    # a random case per sample, as ours (an epoch of len(cases) samples could be shorter than a batch)
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**4, generator=torch.Generator().manual_seed(0))
    loader = MonaiLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, worker_init_fn=_one_thread,
                         persistent_workers=workers > 0, drop_last=True)

    def batches():
        for b in loader:
            yield {"image": b["image"], "target": b["label"].float(), "case_id": b["case_id"]}

    return batches(), [d["case_id"] for d in data]


def _scale_shift(x: torch.Tensor) -> torch.Tensor:
    """The intensity change for TorchIO (a module-level function: its workers pickle the transform)."""
    shape = (x.shape[0], *(1,) * (x.ndim - 1))
    if torch.rand(()) < 0.5:
        x = x * (0.9 + 0.2 * torch.rand(shape))
    if torch.rand(()) < 0.5:
        x = x + (0.2 * torch.rand(shape) - 0.1)
    return x


def torchio_pipeline(cases, patch, batch, workers) -> tuple[Iterable, list[str]]:
    import torchio as tio

    dims = len(patch)
    size = tuple(patch) if dims == 3 else (*patch, 1)

    def padded(array: np.ndarray) -> torch.Tensor:  # in memory, at least the patch size (as MONAI's SpatialPadd)
        pad = [(0, 0)] + [((max(p - n, 0)) // 2, max(p - n, 0) - max(p - n, 0) // 2) for n, p in zip(array.shape[1:], size)]
        return torch.from_numpy(np.pad(np.asarray(array), pad))

    subjects = [
        tio.Subject(image=tio.ScalarImage(tensor=padded(c.image)),
                    label=tio.LabelMap(tensor=padded(np.asarray(c.label, dtype=np.int16)[None])),
                    sampling=tio.LabelMap(tensor=padded((np.asarray(c.label) > 0).astype(np.uint8)[None])),
                    case_id=c.case_id)
        for c in cases
    ]
    transform = tio.Compose([
        tio.RandomFlip(axes=tuple(range(dims)), flip_probability=0.5),
        tio.RandomAffine(scales=SCALE, degrees=(ROTATE_DEG if dims == 3 else (0, 0, 0, 0, -ROTATE_DEG, ROTATE_DEG)),
                         image_interpolation="linear", default_pad_value=0, p=SPATIAL_PROB),
        tio.Lambda(_scale_shift, types_to_apply=[tio.INTENSITY]),
    ])
    sampler = tio.LabelSampler(size, label_name="sampling", label_probabilities={0: 1 - OVERSAMPLE, 1: OVERSAMPLE})
    queue = tio.Queue(tio.SubjectsDataset(subjects, transform=transform), max_length=2 * batch, samples_per_volume=batch,
                      sampler=sampler, num_workers=workers, shuffle_subjects=True, shuffle_patches=True)
    loader = DataLoader(queue, batch_size=batch, num_workers=0)

    def batches():
        while True:
            for b in loader:
                image, label = b["image"][tio.DATA], b["label"][tio.DATA][:, 0].numpy()
                if dims == 2:
                    image, label = image[..., 0], label[..., 0]
                target = torch.from_numpy(np.stack([labels_to_regions(x, REGIONS) for x in label]))
                yield {"image": image, "target": target, "case_id": b["case_id"]}

    return batches(), [s["case_id"] for s in subjects]


class _NnunetStyleDataset(Dataset):
    """Patches cut with nnU-Net's oversampling rule, augmented by batchgeneratorsv2's transforms."""

    def __init__(self, cases, patch, batch) -> None:
        from batchgeneratorsv2.transforms.intensity.brightness import (
            BrightnessAdditiveTransform,
            MultiplicativeBrightnessTransform,
        )
        from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
        from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
        from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
        from batchgeneratorsv2.transforms.utils.random import RandomTransform
        from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

        self.cases, self.patch, self.batch = cases, tuple(patch), batch
        self.foreground = [foreground_voxels(c.label) for c in cases]
        angle = math.radians(ROTATE_DEG)
        self.transforms = ComposeTransforms([
            RandomTransform(SpatialTransform(self.patch, 0, random_crop=False, p_rotation=1, rotation=(-angle, angle),
                                             p_scaling=1, scaling=(1 - SCALE, 1 + SCALE),
                                             p_synchronize_scaling_across_axes=0), apply_probability=SPATIAL_PROB),
            MirrorTransform(allowed_axes=tuple(range(len(self.patch)))),
            RandomTransform(MultiplicativeBrightnessTransform((0.9, 1.1), synchronize_channels=False), apply_probability=0.5),
            RandomTransform(BrightnessAdditiveTransform(0.0, 0.2 / math.sqrt(12), synchronize_channels=False), apply_probability=0.5),
            ConvertSegmentationToRegionsTransform([tuple(v) for v in REGIONS.values()]),
        ])

    def __getitem__(self, key):
        epoch, index = key
        rng = np.random.default_rng((epoch, index))
        i = int(rng.integers(len(self.cases)))
        case, fg = self.cases[i], self.foreground[i]
        oversampled = index % self.batch >= round(self.batch * (1 - OVERSAMPLE))
        center = fg[rng.integers(len(fg))] if oversampled and len(fg) else None
        if len(self.patch) == 3:
            start = patch_start(case.image.shape[1:], self.patch, rng, center)
            image, label = crop_or_pad(case.image, start, self.patch), crop_or_pad(case.label[None], start, self.patch)
        else:
            z = int(center[2]) if center is not None else int(rng.integers(case.image.shape[3]))
            start = patch_start(case.image.shape[1:3], self.patch, rng, None if center is None else center[:2])
            image = crop_or_pad(case.image[..., z], start, self.patch)
            label = crop_or_pad(case.label[None, ..., z], start, self.patch)
        out = self.transforms(image=torch.from_numpy(image), segmentation=torch.from_numpy(label.astype(np.int16)))
        return {"image": out["image"], "target": out["segmentation"].float(), "case_id": case.case_id}


def bgv2_pipeline(cases, patch, batch, workers) -> tuple[Iterable, list[str]]:
    dataset = _NnunetStyleDataset(cases, patch, batch)
    loader = DataLoader(dataset, batch_size=batch, sampler=EpochSampler(10**4), num_workers=workers,
                        worker_init_fn=_one_thread, persistent_workers=workers > 0, drop_last=True)
    return loader, [c.case_id for c in cases]


PIPELINES: dict[str, Callable] = {
    "ours": ours,
    "ours-batch": lambda *a: ours(*a, device_augment=True),
    "monai": monai_pipeline,
    "torchio": torchio_pipeline,
    "bgv2": bgv2_pipeline,
}


def available(name: str) -> str | None:
    """``None`` when the pipeline's library imports, else why not."""
    module = {"torchio": "torchio", "bgv2": "batchgeneratorsv2"}.get(name)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError as exc:
        return f"not installed ({exc.name}; pip install -e '.[bench]')"
    return None


def _children_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's descendants: the live ones (loader workers, read
    from ``/proc``) and those already ended and reaped; 0 where ``/proc`` is missing."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0.0
    pending = [os.getpid()]
    while pending:
        pid = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                pending.append(child)
                try:
                    fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
                except (OSError, IndexError, ValueError):
                    pass
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + usage.ru_utime + usage.ru_stime


def time_pipeline(batches: Iterable, count: int, warmup: int = 2) -> tuple[float, float, tuple, tuple]:
    """Wall seconds and CPU seconds per batch over ``count`` batches after ``warmup``; the image and
    target shapes. CPU seconds are those of every process of the pipeline (this one,
    ``time.process_time``, and its loader workers): on a shared core they estimate the cost on an idle
    one, and per worker they say how many samples one fully used core delivers.

    TorchIO's queue (2 batches long, refilled with 2 transformed subjects when empty) is full after
    the warm-up, so an even ``count`` times whole fill-and-drain cycles, not a pre-filled queue.
    """
    iterator = iter(batches)
    for _ in range(warmup):
        first = next(iterator)
    cpu, start = time.process_time() + _children_cpu_seconds(), time.perf_counter()
    for _ in range(count):
        next(iterator)
    wall, cpu = time.perf_counter() - start, time.process_time() + _children_cpu_seconds() - cpu
    return wall / count, cpu / count, tuple(first["image"].shape), tuple(first["target"].shape)


def run(args: argparse.Namespace) -> list[dict]:
    global SPATIAL_PROB  # every pipeline reads it when built
    SPATIAL_PROB = args.spatial_prob
    torch.set_num_threads(1)
    cases = load_cases(args.root, args.cases, args.cache_dir, args.spacing, axial_copy=2 in args.dims)
    rows = []
    for dims in args.dims:
        patch, batch = (args.patch3d, args.batch3d) if dims == 3 else (args.patch2d, args.batch2d)
        count = args.batches3d if dims == 3 and args.batches3d else args.batches
        count += count % 2
        for name in args.pipelines:
            for workers in args.workers:
                row = {"pipeline": name, "dims": dims, "patch": "x".join(map(str, patch)), "batch": batch, "workers": workers,
                       "cases": len(cases), "batches": count, "warmup": 2, "spatial_prob": SPATIAL_PROB}
                reason = available(name)
                if reason is None:
                    batches, _ = PIPELINES[name](cases, patch, batch, workers)
                    seconds, cpu, image_shape, target_shape = time_pipeline(batches, count)
                    row.update({"s_per_batch": seconds, "samples_per_s": batch / seconds,
                                "samples_per_s_per_worker": batch / seconds / max(1, workers),
                                "cpu_s_per_batch": cpu, "samples_per_cpu_s": batch / cpu,
                                "image": "x".join(map(str, image_shape)), "target": "x".join(map(str, target_shape))})
                else:
                    row["note"] = reason
                rows.append(row)
                print(row, flush=True)
    return rows


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/brats2018", help="BraTS 2018-2020 cases")
    parser.add_argument("--cache-dir", default="cache/benchmarks")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--spacing", type=float, nargs=3, default=None, help="mm; default: the original grid")
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 2])
    parser.add_argument("--pipelines", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=6, help="timed batches per setting (even; after two warm-up)")
    parser.add_argument("--batches3d", type=int, default=None,
                        help="timed 3D batches (default --batches): more, as one 3D sample in five pays a resampling")
    parser.add_argument("--patch3d", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--batch3d", type=int, default=2)
    parser.add_argument("--patch2d", type=int, nargs=2, default=[224, 224])
    parser.add_argument("--batch2d", type=int, default=32)
    parser.add_argument("--spatial-prob", type=float, default=SPATIAL_PROB,
                        help="probability of the rotation/scaling in every pipeline; 0 times all but the resampling, "
                             "whose share at 0.2 swings with the few draws a short run makes")
    parser.add_argument("--csv", default="experiments/benchmarks/input_pipeline.csv")
    parser.add_argument("--tiny", action="store_true", help="2 cases at 3 mm, 32^3 / 8 x 48^2 patches, 2 batches, 0 workers")
    args = parser.parse_args(argv)
    if args.tiny:
        args.cases, args.spacing, args.batches, args.batches3d, args.workers = 2, [3.0, 3.0, 3.0], 2, None, [0]
        args.patch3d, args.patch2d, args.batch2d = [32, 32, 32], [48, 48], 8
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse(argv)
    rows = run(args)
    report(rows, args.csv, f"Training input pipeline ({len(rows)} settings, {args.cases} cases)", machine())
    return rows


if __name__ == "__main__":
    main()
