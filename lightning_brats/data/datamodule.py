"""The LightningDataModule: wiring from a reader to 2D or 3D samples.

It reads cases with the reader ``data.layout`` names (:mod:`lightning_brats.data.readers`), preprocesses
them once into a cache (:mod:`~lightning_brats.data.preprocess`), splits them by case
(:mod:`~lightning_brats.data.splits`) and samples patches or slices (:mod:`~lightning_brats.data.sampling`);
the same class serves every dataset (BraTS releases, MSD Task01, LGG).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from lightning_brats.data.batch_augment import BatchAugmentation, label_regions, region_table
from lightning_brats.data.context import check_context
from lightning_brats.data.labels import labels_to_regions
from lightning_brats.data.preprocess import CachedCase, PreprocessedCache
from lightning_brats.data.readers import CaseReader, CaseSource, DataError, make_reader
from lightning_brats.data.release import Release
from lightning_brats.data.sampling import (
    FOREGROUND_SAMPLING,
    Augmentation,
    EpochSampler,
    TrainingSampleDataset,
)
from lightning_brats.data.settings import PreprocessingSettings
from lightning_brats.data.splits import (
    FOLD_ALL,
    FOLD_ALL_NOTE,
    check_fold,
    fold_all_split,
    read_splits,
    write_fold_all_splits,
    write_splits,
)

log = logging.getLogger(__name__)


class WholeCaseDataset(Dataset):
    """Whole preprocessed cases for validation: ``image (C, x, y, z)``, ``target (R, x, y, z)``."""

    def __init__(self, cases: Sequence[CachedCase], regions: Mapping[str, Sequence[int]]) -> None:
        self.cases = list(cases)
        self.regions = dict(regions)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict:
        case = self.cases[index]
        return {
            "image": torch.from_numpy(np.asarray(case.image, dtype=np.float32).copy()),
            "target": torch.from_numpy(labels_to_regions(np.asarray(case.label), self.regions)),
            "case_id": case.case_id,
        }


class SegmentationDataModule(pl.LightningDataModule):
    """Segmentation data for training, any release a reader reads: cases -> preprocessing cache -> 2D/3D samples.

    Args:
        root: folder searched (recursively) for cases.
        release: the release's description, ``data.release`` (:class:`~lightning_brats.data.release.Release`
            or its mapping): the file layout (the reader's name and arguments, or a reader already built),
            the label codes and the regions (output channels, in order); its post-processing and
            evaluation are prediction's and ``eval.py``'s, not read here.
        preprocessing: the preprocessing plan, ``data.preprocessing``
            (:class:`~lightning_brats.data.settings.PreprocessingSettings` or its mapping: modalities
            stacked as input channels, spacing in mm, normalization, crop, crop_size), kept as
            :attr:`preprocessing`, which keys the cache.
        sampling: ``"3d"`` (patches) or ``"2d"`` (axial slices).
        patch_size: ``[x, y, z]`` voxels for 3D; the first two are the slice size for 2D.
        context_slices: ``k``, 2D only: the network sees the ``2k + 1`` axial slices ``z - k ... z + k`` of
            every modality as input channels (2.5D; modality-major, border slices repeated, see
            :mod:`lightning_brats.data.context`) and segments slice ``z``; training samples, whole-case
            validation and prediction stack them alike. 0 (default): plain 2D; 3D sampling needs 0.
        batch_size: samples per training step, all processes together (the GLOBAL batch). Under
            DDP each of the ``W`` processes takes ``batch_size // W`` of them
            (:attr:`rank_batch_size`); ``batch_size`` must be divisible by ``W``.
        oversample_foreground: fraction of each batch centred on a tumour voxel.
        foreground_sampling: how that voxel is chosen (:data:`~lightning_brats.data.sampling.FOREGROUND_SAMPLING`):
            ``voxel`` (default), any tumour voxel uniformly; ``label``, a label code present in the case
            first, uniformly (nnU-Net v1); ``region``, a region present first, uniformly (nnU-Net v2's
            region-based training), then a voxel of it.
        samples_per_epoch: training samples per epoch, all processes together; an epoch is
            ``samples_per_epoch // batch_size`` steps (a last incomplete batch is not drawn).
        num_folds, fold, seed: the case-level cross-validation split (see :func:`~lightning_brats.data.splits.kfold_split`),
            saved as ``splits_<k>folds_seed<seed>.json`` in the cache folder (copied into each run folder
            as ``splits.json``) and reused while the labelled cases,
            seed and number of folds stay the same.
            ``fold="all"`` (:data:`~lightning_brats.data.splits.FOLD_ALL`, nnU-Net's fold ``all``) trains on every
            labelled case and validates on fold 0's validation cases, which are then training cases: its
            validation shows that training went well, not how the model does on unseen cases. Its
            :attr:`splits_path` is ``<splits file>_all.json`` in the cache folder, which says so.
        splits_file: a user-supplied splits file (see :func:`~lightning_brats.data.splits.read_splits`); ``data.fold`` picks
            one of its folds and ``num_folds``/``seed`` are then not used.
        augment: training augmentation settings (see :class:`~lightning_brats.data.sampling.Augmentation`:
            ``flip``, ``intensity``, ``spatial_prob``, ``rotate_deg``, ``scale``, ``elastic_*``, ``device``, nnU-Net's
            ``*_prob`` intensity set), or ``None``/``False``
            for none. ``device: batch`` augments whole batches on the training device in
            :meth:`on_after_batch_transfer` instead of each sample in the loader workers.
        num_workers: DataLoader workers; with any, they are persistent and batches are pinned
            (page-locked) when training on a GPU.
        cache_dtype: ``float32`` or ``float16``: the cached images' dtype (float16 halves the cache and
            its page cache; samples are float32 either way). Part of the cache fingerprint.
        cache_dir: where preprocessed caches live (one sub-folder per fingerprint).
        phantoms: optional callable ``phantoms(root)`` that writes a synthetic dataset into
            ``root`` when it holds no cases yet (used by ``data=sample``).
        notice: a message printed when the data are prepared (e.g. "these are synthetic").
        max_val_cases: validate on at most this many cases of the fold (``None``: all).
        preprocess_workers: processes preprocessing cases in parallel (on the first use only).
        min_foreground_fraction: drop training cases (3D) or axial slices (2D) whose tumour
            voxels are a smaller share than this of the preprocessed case or slice; validation
            keeps every case. ``None`` or 0 keeps everything. The count dropped is logged.
        prepare_data_per_node: ``False`` (default): only global rank 0 writes phantoms, the
            preprocessing cache and the splits file (:meth:`prepare_data`), which suits a cache
            folder every node sees (a shared file system); ``True``: local rank 0 of every node
            does, for node-local cache folders. Other processes only read, after Lightning's barrier.

    Under DDP (Lightning sets :attr:`trainer` before :meth:`setup`) every process draws its own
    share of each global batch (see :class:`~lightning_brats.data.sampling.EpochSampler`) and the
    validation cases are split across processes without repeating any (Lightning's
    ``UnrepeatedDistributedSampler``; its default ``DistributedSampler`` would pad the last
    processes with repeated cases, which would then count twice in the Dice).

    Raises:
        ValueError: an incomplete release (see :meth:`~lightning_brats.data.release.Release.from_config`); an
            unknown reader (see :func:`~lightning_brats.data.readers.make_reader`); an unknown
            ``sampling``, or one the layout does not support (the LGG
            slices are 2D only); a modality the layout does not have; a ``patch_size`` with too few or non-positive values; a ``batch_size``
            below 1; a ``fold`` that is neither ``all`` nor a whole number, one outside ``[0, num_folds)`` or
            fewer than 2 folds (without a ``splits_file``, whose folds are checked in :meth:`setup`); ``samples_per_epoch``
            smaller than ``batch_size``; a negative ``context_slices``, or one above 0 with 3D sampling; an
            unknown ``foreground_sampling``;
            invalid preprocessing settings (see
            :class:`~lightning_brats.data.settings.PreprocessingSettings`).
    """

    def __init__(
        self,
        root: str,
        release: Release | Mapping,
        preprocessing: PreprocessingSettings | Mapping,
        sampling: str = "3d",
        patch_size: Sequence[int] = (128, 128, 128),
        batch_size: int = 2,
        oversample_foreground: float = 0.33,
        samples_per_epoch: int = 500,
        num_folds: int = 5,
        fold: int | str = 0,
        seed: int = 12345,
        augment: Mapping | bool | None = True,
        num_workers: int = 4,
        cache_dir: str = "cache",
        phantoms: Callable[[str], None] | None = None,
        notice: str | None = None,
        max_val_cases: int | None = None,
        splits_file: str | None = None,
        preprocess_workers: int = 1,
        min_foreground_fraction: float | None = None,
        prepare_data_per_node: bool = False,
        cache_dtype: str = "float32",
        context_slices: int = 0,
        foreground_sampling: str = "voxel",
    ) -> None:
        super().__init__()
        self.prepare_data_per_node = prepare_data_per_node
        if sampling not in ("2d", "3d"):
            raise ValueError(f"data.sampling must be '2d' or '3d', got {sampling!r}")
        #: the release's description (``data.release``): layout, label codes, regions (the rest is prediction's)
        self.release = release if isinstance(release, Release) else Release.from_config(release)
        #: what the cache, validation and (through the checkpoint's data config) prediction preprocess with
        self.preprocessing = (
            preprocessing if isinstance(preprocessing, PreprocessingSettings) else PreprocessingSettings.from_config(preprocessing)
        )
        modalities = self.preprocessing.modalities
        #: the reader of ``data.release.layout`` (:class:`~lightning_brats.data.readers.CaseReader`)
        self.reader = reader = make_reader(self.release.layout)
        if sampling not in reader.sampling:
            raise ValueError(
                f"data.sampling={sampling} is not possible with this dataset's layout ({reader.describe()}): it supports "
                f"only {list(reader.sampling)}; set data.sampling={reader.sampling[0]} and a matching model "
                f"(e.g. model=unet{reader.sampling[0]})"
            )
        unknown = [m for m in modalities if m not in reader.modalities]
        if unknown:
            raise ValueError(
                f"data.modalities={list(modalities)} names {unknown}, which this dataset's layout does not have; "
                f"its modalities are {reader.modalities} ({reader.describe()})"
            )
        self.root = Path(root)
        self.modalities = list(modalities)
        self.labels = dict(self.release.labels)
        self.regions = {k: list(v) for k, v in self.release.regions.items()}
        self.sampling = sampling
        self.spatial_dims = int(sampling[0])
        #: neighbouring slices on each side as input channels (2D; :mod:`lightning_brats.data.context`)
        self.context_slices = check_context(context_slices, sampling)
        self.patch_size = [int(p) for p in patch_size][: self.spatial_dims]
        if len(self.patch_size) != self.spatial_dims:
            raise ValueError(f"data.patch_size={list(patch_size)} has fewer than {self.spatial_dims} values")
        if min(self.patch_size) < 1:
            raise ValueError(f"data.patch_size={list(patch_size)}: every size must be a positive number of voxels")
        if int(batch_size) < 1:
            raise ValueError(f"data.batch_size={batch_size}: expected at least 1")
        if not splits_file and num_folds < 2:
            raise ValueError(f"data.num_folds={num_folds}: expected at least 2 folds")
        fold = check_fold(fold, None if splits_file else num_folds)
        if samples_per_epoch < batch_size:
            raise ValueError(
                f"data.samples_per_epoch={samples_per_epoch} is smaller than data.batch_size={batch_size}: an epoch "
                "would hold no training step; raise data.samples_per_epoch or lower data.batch_size"
            )
        self.batch_size = batch_size
        self.rank_batch_size = batch_size
        self.oversample_foreground = oversample_foreground
        if foreground_sampling not in FOREGROUND_SAMPLING:
            raise ValueError(f"data.foreground_sampling={foreground_sampling!r}: expected one of {list(FOREGROUND_SAMPLING)}")
        self.foreground_sampling = foreground_sampling
        self.samples_per_epoch = samples_per_epoch
        self.num_folds, self.fold, self.seed = num_folds, fold, seed
        if augment is True:
            self.augment = Augmentation()
        else:
            self.augment = Augmentation(**augment) if augment else None
        self.batch_augment = None
        if self.augment is not None and self.augment.device == "batch":
            self.batch_augment = BatchAugmentation(**self.augment.batch_settings())
        self._region_tables: dict[torch.device, torch.Tensor] = {}  # label -> regions, per device (batch path)
        self.num_workers = num_workers
        self.phantoms = phantoms
        self.notice = notice
        self.max_val_cases = max_val_cases
        self.splits_file = splits_file
        self.preprocess_workers = preprocess_workers
        self.min_foreground_fraction = min_foreground_fraction
        self.cache = PreprocessedCache(
            cache_dir,
            self.root.resolve().name,
            self.preprocessing,
            self.labels,
            source={"root": str(self.root.resolve()), "layout": reader.describe()},
            dtype=cache_dtype,
            axial_copy=self.spatial_dims == 2,  # 2D training reads axial slices: keep them contiguous
        )
        self.train_ids: list[str] = []
        self.val_ids: list[str] = []
        self.train_set = self.val_set = None
        # whole global batches only, so that any process count dividing batch_size shares them evenly
        self.train_sampler = EpochSampler(samples_per_epoch - samples_per_epoch % batch_size)

    @property
    def region_names(self) -> list[str]:
        """Region names in output-channel order, e.g. ``["wt", "tc", "et"]``."""
        return list(self.regions)

    def find_cases(self) -> list[CaseSource]:
        """The dataset's cases (raises :class:`DataError` naming the root when there are none)."""
        return self.reader.find_cases(self.root)

    @property
    def folds_path(self) -> Path:
        """The folds: ``data.splits_file``, or ``splits_<k>folds_seed<seed>.json`` in the
        cache folder (named by what draws the folds: runs with other fold counts or seeds share the
        cache but never rewrite each other's folds)."""
        if self.splits_file:
            return Path(self.splits_file)
        return self.cache.path / f"splits_{self.num_folds}folds_seed{self.seed}.json"

    @property
    def splits_path(self) -> Path:
        """The splits file of this run (copied into the run folder as ``splits.json``): :attr:`folds_path`
        for a numbered fold; for ``fold=all``, ``<folds file>_all.json`` in the cache folder, the folds plus
        ``fold: "all"``, the ``train`` and ``val`` lists and a note that validation is on training cases
        (:func:`~lightning_brats.data.splits.write_fold_all_splits`, written by :meth:`prepare_data`)."""
        if self.fold != FOLD_ALL:
            return self.folds_path
        return self.cache.path / f"{self.folds_path.stem}_all.json"

    def _labelled_ids(self, cases: Sequence[CaseSource]) -> list[str]:
        labelled = [c.case_id for c in cases if c.labelled]
        if not labelled:
            raise DataError(f"no labelled cases under {self.root}: training needs label files")
        return labelled

    def _write_splits(self, cases: Sequence[CaseSource]) -> None:
        """Write the folds file (:attr:`folds_path`) unless one for the same cases, seed and folds is there (rank 0)."""
        if write_splits(self.folds_path, self._labelled_ids(cases), self.num_folds, self.seed):
            log.info(f"Wrote {self.num_folds} case-level folds (seed {self.seed}) to {self.folds_path}")

    def check_root(self) -> None:
        """Raise :class:`DataError` (naming the root and the layout) unless cases can be found or generated."""
        if self.phantoms is None:
            self.find_cases()

    def prepare_data(self) -> None:
        """Write phantoms if configured and missing, then fill the preprocessing cache and write the
        splits file (:attr:`splits_path`) (rank 0)."""
        if self.notice:
            log.warning(self.notice)
        if self.phantoms is not None and not _has_cases(self.reader, self.root):
            self.phantoms(str(self.root))
        cases = self.find_cases()
        self.cache.ensure(cases, log=log.info, workers=self.preprocess_workers)
        if not self.splits_file:
            self._write_splits(cases)
        if self.fold == FOLD_ALL:
            write_fold_all_splits(self.splits_path, self._labelled_ids(cases), self.folds_path)

    @property
    def world_size(self) -> int:
        """Processes training together: the trainer's ``world_size``, 1 without a trainer."""
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def setup(self, stage: str | None = None) -> None:
        """Split by case and build the training and validation datasets from the cache.

        Raises:
            ValueError: ``data.batch_size`` is not divisible by the number of processes, or
                there are fewer validation cases than processes.
            DataError: the splits file does not match the cases.
        """
        world = self.world_size
        if self.batch_size % world:
            raise ValueError(
                f"data.batch_size={self.batch_size} is the global batch size and must be divisible by the {world} "
                f"processes (trainer.devices x trainer.num_nodes); set data.batch_size to a multiple of {world}, "
                f"e.g. data.batch_size={world * max(1, round(self.batch_size / world))}"
            )
        self.rank_batch_size = self.batch_size // world
        rank = int(self.trainer.global_rank) if world > 1 else 0
        self.train_sampler = EpochSampler(self.train_sampler.samples_per_epoch, world, rank, self.train_sampler.epoch)
        if self.train_set is not None:
            self._check_val_shards(world)
            return
        labelled = set(self._labelled_ids(self.find_cases()))
        folds = read_splits(self.folds_path)
        if self.fold == FOLD_ALL:
            self.train_ids, self.val_ids = fold_all_split(labelled, folds)
        elif not 0 <= self.fold < len(folds):
            raise DataError(f"{self.folds_path}: data.fold={self.fold} but the file holds {len(folds)} folds")
        else:
            self.train_ids, self.val_ids = sorted(folds[self.fold]["train"]), sorted(folds[self.fold]["val"])
        unknown = sorted(set(self.train_ids + self.val_ids) - labelled)
        if unknown:
            raise DataError(f"{self.folds_path}: cases {unknown} are not labelled cases under {self.root}")
        if self.fold != FOLD_ALL and set(self.train_ids) & set(self.val_ids):
            raise DataError(f"{self.folds_path}: fold {self.fold} has cases on both sides")
        val_ids = self.val_ids[: self.max_val_cases] if self.max_val_cases else self.val_ids
        if self.fold == FOLD_ALL:
            log.warning(
                f"Fold all: {len(self.train_ids)} training cases (every labelled case), {len(val_ids)} validation cases "
                f"that are training cases too ({', '.join(val_ids)}). {FOLD_ALL_NOTE}"
            )
        else:
            log.info(
                f"Fold {self.fold}/{self.num_folds}: {len(self.train_ids)} training cases, "
                f"{len(val_ids)} validation cases ({', '.join(val_ids)})"
            )
        train_cases = [self.cache.load(i) for i in self.train_ids]
        self.train_set = TrainingSampleDataset(
            train_cases,
            self.regions,
            self.patch_size,
            self.batch_size,
            self.oversample_foreground,
            self.augment,
            self.seed,
            self.min_foreground_fraction,
            self.context_slices,
            self.foreground_sampling,
        )
        if self.train_set.dropped:
            log.info(f"data.min_foreground_fraction={self.min_foreground_fraction}: {self.train_set.dropped}")
        self.val_set = WholeCaseDataset([self.cache.load(i) for i in val_ids], self.regions)
        self._check_val_shards(world)

    def _check_val_shards(self, world: int) -> None:
        if world > 1 and len(self.val_set) < world:
            raise ValueError(
                f"{len(self.val_set)} validation cases cannot be shared by {world} processes (each needs at least "
                f"one): raise data.max_val_cases, use fewer data.num_folds, or train on fewer processes"
            )

    def train_dataloader(self) -> DataLoader:
        """Batches of :attr:`rank_batch_size` samples: this process's share of each global batch."""
        return DataLoader(
            self.train_set,
            batch_size=self.rank_batch_size,
            sampler=self.train_sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._pin_memory,
            drop_last=True,
        )

    @property
    def _pin_memory(self) -> bool:
        """Pin batches when workers load them for a GPU (a page-locked copy is faster to transfer)."""
        trainer = getattr(self, "trainer", None)
        on_gpu = trainer is not None and getattr(trainer.strategy.root_device, "type", "cpu") == "cuda"
        return self.num_workers > 0 and on_gpu

    def batch_seed(self, key: torch.Tensor) -> int:
        """The seed of a batch's device augmentation, from its first sample's ``(epoch, index)`` key
        (``(B, 2)`` on the CPU): the same batch gets the same augmentation with any worker count,
        after a resume, and on each DDP process its own."""
        epoch, index = (int(v) for v in key[0])
        return int(np.random.SeedSequence((self.seed, epoch, index, 1)).generate_state(1)[0])

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Note the device augmentation's seed while the keys are still on the CPU (no device sync)."""
        if self.batch_augment is not None and isinstance(batch, dict) and "key" in batch:
            batch["augment_seed"] = self.batch_seed(batch["key"])
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With ``data.augment.device=batch``: augment the training batch on its device
        (:meth:`augment_batch`); other batches pass unchanged."""
        if isinstance(batch, dict) and "augment_seed" in batch:
            seed = batch.pop("augment_seed")
            generator = torch.Generator(device=batch["image"].device).manual_seed(seed)
            self.augment_batch(batch, generator)
        return batch

    def augment_batch(self, batch: dict, generator: torch.Generator) -> dict:
        """Augment a training batch where it is (:class:`~lightning_brats.data.batch_augment.BatchAugmentation`),
        with no host sync on a GPU.

        Args:
            batch: ``image (B, C, *spatial)`` (float32 or the cache's float16) and either ``label
                (B, 1, *spatial)`` uint8 (what the loader sends for uint8 caches) or ``target (B, R, *spatial)``
                float32; changed in place.
            generator: on the batch's device; draws every random parameter.

        Returns:
            ``batch`` with ``image`` float32 and ``target (B, R, *spatial)`` float32 augmented; the label
            map, augmented first, is turned into the targets on the device and removed.
        """
        image, k = batch["image"].float(), self.context_slices
        if "label" not in batch:
            batch["image"], batch["target"] = self.batch_augment(image, batch["target"], generator, k)
            return batch
        batch["image"], label = self.batch_augment(image, batch.pop("label"), generator, k)
        batch["target"] = label_regions(label, self._region_table(label.device))
        return batch

    def _region_table(self, device: torch.device) -> torch.Tensor:
        """The training set's label -> regions table on ``device`` (copied there once)."""
        if device not in self._region_tables:
            self._region_tables[device] = region_table(self.train_set.region_table, device)
        return self._region_tables[device]

    def val_dataloader(self) -> DataLoader:
        """Whole cases, one per batch; under DDP process ``r`` of ``W`` gets cases ``r, r + W, ...``."""
        sampler = None
        if self.world_size > 1:
            sampler = UnrepeatedDistributedSampler(
                self.val_set, num_replicas=self.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        workers = min(self.num_workers, 1)
        return DataLoader(
            self.val_set, batch_size=1, sampler=sampler, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=self._pin_memory,
        )

    def state_dict(self) -> dict:
        """Saved in checkpoints by Lightning: the training sampler's epoch."""
        return {"train_sampler": self.train_sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restored by Lightning on ``fit(ckpt_path=...)`` before the first epoch."""
        self.train_sampler.load_state_dict(state["train_sampler"])


def _has_cases(reader: CaseReader, root: Path) -> bool:
    try:
        return bool(reader.find_cases(root))
    except DataError:
        return False


class BratsDataModule(SegmentationDataModule):
    """Deprecated name of :class:`SegmentationDataModule` (which serves MSD and LGG too), kept so that
    configs and checkpoints holding ``_target_: lightning_brats.data.datamodule.BratsDataModule`` still
    load; it warns once per construction. It takes the arguments of either shape of ``data`` config: the
    flat one of its time (``layout``, ``regions``, ``spacing``, ... beside the datamodule's arguments) is
    moved into ``release`` and ``preprocessing`` by :func:`~lightning_brats.data.data_config.upgrade_data_config`.
    Its state in checkpoints stays under ``BratsDataModule``.

    Raises:
        ValueError, TypeError: as :class:`SegmentationDataModule`."""

    def __init__(self, *args, **kwargs) -> None:
        from lightning_brats.data.data_config import upgrade_data_config

        warnings.warn(
            "lightning_brats.data.datamodule.BratsDataModule is deprecated: set data._target_ to "
            "lightning_brats.data.datamodule.SegmentationDataModule (the same class under its new name)",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__(*args, **upgrade_data_config(kwargs))


#: names the datamodule's state was saved under in checkpoints before it was renamed
LEGACY_STATE_KEYS = ("BratsDataModule",)


def adopt_legacy_state(checkpoint: dict, datamodule: pl.LightningDataModule) -> None:
    """Let ``datamodule`` restore the state a checkpoint saved under the class's old name.

    Lightning stores a datamodule's :meth:`~SegmentationDataModule.state_dict` under its class name
    and restores it only under the same name, so a run saved by ``BratsDataModule`` and resumed by
    :class:`SegmentationDataModule` would silently restart its sampler's epoch. Called from the
    LightningModule's ``on_load_checkpoint``, which Lightning runs before it restores the datamodule.
    ``checkpoint`` is changed in place; nothing happens when it holds the new name already.
    """
    key = type(datamodule).__qualname__
    if key in checkpoint:
        return
    for old in LEGACY_STATE_KEYS:
        if old in checkpoint:
            checkpoint[key] = checkpoint[old]
            return
