"""From a checkpoint to label maps on the original grid: load, preprocess, infer, post-process, write.

The checkpoint carries the resolved ``data`` and ``model`` config of its training run
(:data:`~lightning_brats.training.checkpoints.CONFIG_KEY`), so prediction repeats the training run's
modalities and preprocessing (crop, normalisation, spacing) without being told: both read
:class:`~lightning_brats.data.settings.PreprocessingSettings` from that ``data`` config, and a
checkpoint whose preprocessing this version cannot reproduce is refused. The files'
release (``data.release``: layout, label codes, regions, post-processing) may be replaced, e.g. a BraTS 2020 model predicting
BraTS 2023 files, as long as the modalities and region names match the network's channels.

Several models (the folds of a cross-validation, a multirun's jobs, exported files) predict as
one ensemble: their probabilities, each after its own flip TTA, are averaged before
thresholding, as nnU-Net (Isensee et al. 2021) and NVIDIA's BraTS 2021 entry (Futrega et al.
2021) ensemble their folds.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from lightning_brats.data.context import input_channels
from lightning_brats.data.data_config import upgrade_data_config
from lightning_brats.data.labels import (
    all_but_largest_component_to,
    region_tree,
    regions_to_labels,
    small_components_to,
)
from lightning_brats.data.preprocess import preprocess_case, resample_to_crop, uncrop
from lightning_brats.data.readers import CaseFiles, CaseSource, DataError, LoadedCase, load_case
from lightning_brats.data.release import DEFAULT_POSTPROCESS, Release
from lightning_brats.data.settings import PreprocessingSettings
from lightning_brats.inference.sliding_window import InferenceSettings, predict_probabilities
from lightning_brats.io import atomic_save
from lightning_brats.training.checkpoints import check_same_channels, load_checkpoint, training_config
from lightning_brats.training.hardware import inference_precision
from lightning_brats.training.module import SegmentationModule, window_size

log = logging.getLogger(__name__)

#: What an exported file's metadata records of its ``data`` config beside the release and the preprocessing
#: plan: the sliding window's dimensionality and size, and the 2.5D context (slices on each side as channels).
WINDOW_KEYS = ("sampling", "context_slices", "patch_size")


def __getattr__(name: str):
    """The key tuples this module had while the ``data`` config was flat (``RELEASE_KEYS``,
    ``PREPROCESSING_KEYS``, ``INFERENCE_KEYS``, ``ENSEMBLE_KEYS``), derived from the parts' fields, with a
    ``DeprecationWarning``: read :class:`~lightning_brats.data.release.Release` and
    :class:`~lightning_brats.data.settings.PreprocessingSettings` (``data.release``, ``data.preprocessing``)."""
    release = tuple(f.name for f in dataclasses.fields(Release))
    plan = tuple(f.name for f in dataclasses.fields(PreprocessingSettings))
    old = {
        "RELEASE_KEYS": release,
        "PREPROCESSING_KEYS": plan[1:],
        "INFERENCE_KEYS": (*release, *plan, *WINDOW_KEYS),
        "ENSEMBLE_KEYS": (*plan, "regions", "labels"),
    }
    if name not in old:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"lightning_brats.inference.prediction.{name} is deprecated: a data config holds its release "
        "(data.release, lightning_brats.data.release.Release) and its preprocessing plan (data.preprocessing, "
        "PreprocessingSettings) as parts of their own",
        DeprecationWarning,
        stacklevel=2,
    )
    return old[name]


def _plain(value):
    """OmegaConf containers as plain (resolved) dicts and lists; other values as they are."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else copy.deepcopy(value)


def release_of(data) -> dict:
    """What ``predict.py`` and ``eval.py`` take from a composed ``data`` config (``data=<release>``): its
    release (``data.release``, whole) and its input modalities (``data.preprocessing.modalities``, to check
    them against the network), plain, in the ``data`` config's shape; the training settings (root, seed,
    cache) are left out. A flat (pre-split) config is read as well.

    Returns:
        ``{"release": {...}, "preprocessing": {"modalities": [...]}}``.
    """
    data = upgrade_data_config(data)
    return {"release": _plain(data["release"]), "preprocessing": {"modalities": _plain(data["preprocessing"]["modalities"])}}


@dataclass
class TrainedModel:
    """A network restored from a checkpoint (or an exported file), with the data config it needs.

    Attributes:
        net: the network in eval mode, on ``device``: maps ``(N, C, *patch)`` to ``(N, R, *patch)`` logits.
        data: the ``data`` config for prediction, in the current shape (a checkpoint's flat one is mapped
            by :func:`~lightning_brats.data.data_config.upgrade_data_config`): the checkpoint's, with its
            ``release`` replaced when asked; ``data["preprocessing"]`` is the training run's plan.
        checkpoint: the checkpoint file (or the exported ``.onnx`` / ``.pt`` file).
        device: where the network runs.
    """

    net: nn.Module
    data: dict
    checkpoint: Path
    device: torch.device

    @property
    def release(self) -> Release:
        """The files' release (:attr:`data` ``["release"]``): layout, label codes, regions, rules."""
        return Release.from_config(self.data["release"])

    @property
    def preprocessing(self) -> PreprocessingSettings:
        """The training run's preprocessing plan, from the checkpoint's ``data.preprocessing`` (a release
        replaced at prediction time does not take part in it)."""
        return PreprocessingSettings.from_config(self.data["preprocessing"])

    @property
    def modalities(self) -> list[str]:
        """Input channels, in order."""
        return list(self.preprocessing.modalities)

    @property
    def regions(self) -> dict[str, list[int]]:
        """Output channels (region name -> label codes of the files' release), in order."""
        return self.release.regions

    @property
    def patch_size(self) -> list[int]:
        """Sliding-window size in voxels: 3 values for a 3D network, 2 (the slice) for a 2D one."""
        return window_size(self.data["patch_size"], self.data.get("sampling", "3d"))

    @property
    def context_slices(self) -> int:
        """``k``: neighbouring slices on each side as input channels (``data.context_slices``; 0 for
        checkpoints and files from before the setting)."""
        return int(self.data.get("context_slices") or 0)

    @property
    def in_channels(self) -> int:
        """The network's input channels: modalities x ``(2k + 1)``."""
        return input_channels(self.modalities, self.context_slices)


def load_trained_model(ckpt_path: str | Path, release: Mapping | None = None, device: str = "auto") -> TrainedModel:
    """Restore the network of a lightning-brats checkpoint for inference.

    Args:
        ckpt_path: a ``.ckpt`` written by ``train.py`` (read by
            :func:`~lightning_brats.training.checkpoints.load_checkpoint`, ``weights_only=True``).
        release: a ``data`` config (e.g. ``conf/data/brats23.yaml`` composed, or :func:`release_of` it)
            whose release (``data.release``) replaces the checkpoint's, part by part (:func:`with_release`);
            ``None`` keeps the checkpoint's.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...

    Raises:
        FileNotFoundError: no file at ``ckpt_path``.
        lightning_brats.training.checkpoints.CheckpointError: (a ``ValueError``) the file is empty,
            truncated, not a PyTorch file, a plain state dict or another project's checkpoint.
        ValueError: its preprocessing cannot be reproduced by this version (an unknown
            ``data.normalization`` or ``data.crop``, or a preprocessing key this version does not know; the
            message names the checkpoint and the key, see
            :meth:`~lightning_brats.data.settings.PreprocessingSettings.from_config`); or the release's
            modalities or region names differ from the network's channels.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file")
    # memory-mapped, weights_only=True: the config is checked before any weight is read
    checkpoint = load_checkpoint(path, mmap=True)  # a clear CheckpointError for a corrupt or foreign file
    data = copy.deepcopy(training_config(checkpoint, path)["data"])  # in the current shape, whatever wrote it
    del checkpoint
    PreprocessingSettings.from_config(data["preprocessing"], source=f"checkpoint {path}")  # refuses what this version cannot reproduce
    data = with_release(data, release, path)
    # Lightning's restore (weights_only=True), the network only: no torch.compile for inference
    net = SegmentationModule.load_from_checkpoint(path, map_location="cpu", compile=False).net
    target = resolve_device(device)
    return TrainedModel(net.eval().to(target), data, path, target)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; any other value as ``torch.device``."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def channels_of(data: Mapping) -> dict:
    """``{"modalities": [...], "regions": {...}}`` of a ``data`` config in the current shape: the network's
    input and output channels, as :func:`~lightning_brats.training.checkpoints.check_same_channels` compares them."""
    return {"modalities": list(data["preprocessing"]["modalities"]), "regions": data["release"]["regions"]}


def with_release(data: dict, release: Mapping | None, path: Path) -> dict:
    """``data`` (current shape) with the release of ``release`` (a ``data`` config, either shape) when given.

    Every part the given release states replaces the checkpoint's (layout, label codes and regions: every
    release config states them); a part it leaves out (``postprocess``, ``evaluation``; e.g. ``msd_task01``
    states neither) stays the checkpoint's, as it always did.

    Raises:
        ValueError: the release's modalities or region names differ from the network's
            channels (the message starts with ``path``).
    """
    if not release:
        return data
    given = release_of(release)
    wanted = {**data, "release": {**data["release"], **given["release"]}}
    try:
        check_same_channels(channels_of(data), channels_of(given))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return wanted


def _ensemble_settings(model: TrainedModel) -> dict:
    """What the models of an ensemble must share, ``data`` path -> value: the preprocessing plan (channels
    in), the regions (channels out, in order) and the label codes."""
    release = model.release
    return {
        **{f"preprocessing.{k}": v for k, v in model.preprocessing.as_record().items()},
        "release.regions": list(release.regions.items()),
        "release.labels": list(release.labels.items()),
    }


def check_ensemble(models: Sequence[TrainedModel]) -> None:
    """Check that models can be averaged: the same preprocessing plan (modalities, spacing,
    normalisation, crop), regions and label codes as the first. Their networks, patch sizes and
    dimensionality may differ (nnU-Net ensembles its 2D and 3D configurations).

    Raises:
        ValueError: names the first model that differs, the setting, and both values.
    """
    first = _ensemble_settings(models[0])
    for model in models[1:]:
        for key, theirs in _ensemble_settings(model).items():
            if theirs != first[key]:
                shown = {"release.regions": dict, "release.labels": dict}.get(key, lambda v: v)
                raise ValueError(
                    f"{model.checkpoint}: data.{key}={shown(theirs)} differs from data.{key}={shown(first[key])} "
                    f"of {models[0].checkpoint}; the models of an ensemble must share their preprocessing "
                    f"({', '.join(k for k in first if k.startswith('preprocessing.'))}), regions and label codes "
                    "(their probabilities are averaged voxel by voxel)"
                )


def multirun_checkpoints(run_dir: str | Path) -> list[Path]:
    """The best checkpoint of every job of a multirun (``python train.py -m ...``).

    A job is a folder holding ``.hydra/overrides.yaml`` (as for ``lightning-brats summarize``);
    its best checkpoint is the ``checkpoints/epoch_*.ckpt`` that ``ModelCheckpoint`` keeps
    (``conf/callbacks/default.yaml``: ``save_top_k: 1`` by ``val/dice_mean``; ``last.ckpt`` is
    not it).

    A multirun that holds cross-validation folds and ``data.fold=all`` jobs (``data.fold=0,1,2,3,4,all``)
    gives the fold ensemble: the fold-``all`` jobs are left out, and the log names them (predict one
    with ``ckpt_path=``). A multirun of fold-``all`` jobs only (seeds, say) is an ensemble of those.

    Args:
        run_dir: ``logs/<task>/multiruns/<date>_<time>``.

    Returns:
        one path per job, in job order (2 before 10).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder, holds no job, or a job has no single
            best checkpoint (the message names the job folder and what is there).
    """
    from lightning_brats.data.splits import job_trained_on_every_case
    from lightning_brats.io import find_job_dirs, no_job_folder

    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run_dir={root}: no such folder (expected logs/<task>/multiruns/<date>_<time>)")
    jobs = find_job_dirs(root)
    if not jobs:
        raise FileNotFoundError(f"run_dir={no_job_folder(root)}")
    every_case = [job for job in jobs if job_trained_on_every_case(job)]
    if every_case and len(every_case) < len(jobs):
        log.warning(
            "run_dir=%s: the fold ensemble leaves out %s, trained with data.fold=all (ckpt_path= predicts it alone)",
            root, ", ".join(str(job.relative_to(root)) for job in every_case),
        )
        jobs = [job for job in jobs if job not in every_case]
    found = []
    for job in jobs:
        best = sorted((job / "checkpoints").glob("epoch_*.ckpt"))
        if len(best) != 1:
            there = sorted(p.name for p in (job / "checkpoints").glob("*.ckpt"))
            raise FileNotFoundError(
                f"run_dir={root}: job {job.relative_to(root)} has {len(best)} best checkpoints "
                f"checkpoints/epoch_*.ckpt (expected 1; found {there or 'no checkpoint'}); "
                "give the checkpoints explicitly: ckpt_path=[a.ckpt,b.ckpt,...]"
            )
        found.append(best[0])
    return found


#: The keys of a post-processing rule (``data.release.postprocess``, ``inference.postprocess``).
POSTPROCESS_KEYS = ("region", "min_voxels", "keep_largest")


@dataclass
class PostProcessing:
    """Connected-component rules applied to a label map: small components of one region, and every
    component but the largest of others, become the label of the region around them.

    With ``region="et"`` the first is the BraTS 2020/2021 rule of the winning entries (Isensee et al.
    2021; Futrega et al. 2021, NVIDIA): enhancing-tumour islands below ``min_voxels`` become
    necrosis (NCR), the label TC adds. ``keep_largest`` is nnU-Net's keep-the-largest-component rule
    (``determine_postprocessing``), per region: with ``("tc",)`` only the largest tumour-core component
    stays core and the others become edema (``experiments/cv_brats_cpu_vs_monai``: it removes distant
    false core islands). Counted on the original grid (at 1 mm, voxels are mm^3); the small-component
    rule runs first.

    Attributes:
        region: the region whose small components are relabelled (the innermost one, ET).
        min_voxels: components with fewer voxels are relabelled; 0 turns that rule off.
        keep_largest: regions reduced to their largest component; ``()`` for none.
    """

    region: str = "et"
    min_voxels: int = 0
    keep_largest: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.keep_largest = region_names(self.keep_largest)

    def __bool__(self) -> bool:
        """Whether the rule changes anything (``min_voxels > 0`` or some ``keep_largest`` region)."""
        return self.min_voxels > 0 or bool(self.keep_largest)

    def apply(self, label: np.ndarray, regions: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, int]:
        """Relabel ``label`` ``(X, Y, Z)``; returns ``(label, voxels relabelled)``.

        Small components of the code ``region`` adds become the code of the region enclosing it
        (:func:`~lightning_brats.data.labels.region_tree`; background for an outermost region); then,
        for each ``keep_largest`` region, the voxels of every component of the region but the largest
        (:func:`~lightning_brats.data.labels.all_but_largest_component_to`) become that region's
        enclosing code. A region the dataset lacks (e.g. the LGG set's single ``abnormality`` has no
        ET) is skipped with a warning naming the regions it has.
        """
        nodes = {node.name: node for node in region_tree(regions)}
        replaced = 0
        if self.min_voxels > 0:
            if self.region in nodes:
                node = nodes[self.region]
                label, replaced = small_components_to(label, node.code, _enclosing_code(nodes, node), self.min_voxels)
            else:
                log.warning(f"no small-component rule: postprocess.region={self.region!r} is not one of the regions {list(nodes)}")
        for name in self.keep_largest:
            if name not in nodes:
                log.warning(f"no largest-component rule for {name!r}: postprocess.keep_largest names a region "
                            f"that is not one of {list(nodes)}")
                continue
            label, count = all_but_largest_component_to(label, regions[name], _enclosing_code(nodes, nodes[name]))
            replaced += count
        return label, replaced


def _enclosing_code(nodes: Mapping, node) -> int:
    """The code of the region around ``node`` (background, 0, for an outermost region)."""
    return nodes[node.parent].code if node.parent else 0


def region_names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """A ``keep_largest`` value as a tuple of region names: ``None`` or ``[]`` -> ``()``, ``"tc"`` -> ``("tc",)``,
    ``["tc"]`` -> ``("tc",)`` (the one reading of the key: the rule, the tuner and its CLI use it)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def postprocessing_for(release: Release | Mapping, override: Mapping | None) -> PostProcessing | None:
    """The post-processing of a release: its rule (``data.release.postprocess``), key by key overridden.

    Args:
        release: the files' :class:`~lightning_brats.data.release.Release`, or a mapping holding a
            ``postprocess`` key (``{region, min_voxels, keep_largest}`` or ``None`` for none; without
            the key, :data:`~lightning_brats.data.release.DEFAULT_POSTPROCESS`).
        override: ``inference.postprocess``: its non-null keys replace the release's (``min_voxels=0``
            turns the small-component rule off, ``keep_largest=[]`` the largest-component rule);
            ``None`` turns post-processing off.

    Returns:
        the rule to apply, or ``None`` for none.

    Raises:
        ValueError: a key that is not one of :data:`POSTPROCESS_KEYS` (named as ``inference.postprocess``
            or ``data.release.postprocess``).
    """
    if override is None:
        return None
    stated = release.postprocess if isinstance(release, Release) else release.get("postprocess", DEFAULT_POSTPROCESS)
    for where, rule in (("data.release.postprocess", stated), ("inference.postprocess", override)):
        unknown = sorted(str(k) for k in dict(rule or {}) if k not in POSTPROCESS_KEYS)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: not a post-processing key (expected {list(POSTPROCESS_KEYS)})")
    rule = dict(stated or {})
    rule.update({k: v for k, v in dict(override).items() if v is not None})
    found = PostProcessing(str(rule.get("region") or "et"), int(rule.get("min_voxels") or 0), rule.get("keep_largest"))
    return found if found else None


@dataclass
class CasePrediction:
    """One case predicted on its original grid.

    Attributes:
        case_id: the case identifier.
        label: ``(X, Y, Z)`` uint8 label map with the release's codes.
        box_probabilities: ``(R, x, y, z)`` float32 per-region probabilities (before nesting) inside the
            case's crop box (``record["crop_box"]``) of the original grid; :attr:`probabilities` places
            them on the whole grid.
        case: the loaded input (image, affine, spacing, files).
        seconds: wall time of loading, inference and post-processing.
        relabelled_voxels: voxels changed by post-processing.
        record: the case's preprocessing record (``crop_box``, ``original_shape``: where the box sits).
    """

    case_id: str
    label: np.ndarray
    box_probabilities: np.ndarray = field(repr=False)
    case: LoadedCase = field(repr=False)
    record: Mapping = field(repr=False)
    seconds: float = 0.0
    relabelled_voxels: int = 0

    @property
    def probabilities(self) -> np.ndarray:
        """``(R, X, Y, Z)`` float32 per-region probabilities on the original grid (0 outside the crop box);
        built on each access, so only callers that write or compare them pay for the whole-grid copy."""
        return uncrop(self.box_probabilities, self.record, fill=0.0)


class Predictor:
    """Segments whole cases with a trained model (or an ensemble), the way the challenge scores them.

    Per case: read the modalities, preprocess exactly as in training (from the checkpoint's
    config), Gaussian-weighted sliding window (3D patches, or slice by slice for a 2D network)
    with optional flip test-time augmentation, probabilities resampled back to the original
    spacing (trilinear) inside the crop box, thresholded per region, turned into labels with ET
    inside TC inside WT (:func:`~lightning_brats.data.labels.regions_to_labels`), post-processed, and
    the label map placed on the whole original grid (the box holds every non-zero probability, so
    this equals doing the steps on the whole grid, at the box's cost).

    With several models, each runs its own sliding window (its patch size, 2D or 3D) and TTA on
    the same preprocessed case, and their probabilities are averaged before the threshold
    (nnU-Net's fold ensemble; Futrega et al. 2021 for BraTS).

    Args:
        model: from :func:`load_trained_model` or
            :func:`~lightning_brats.inference.export.load_exported_model`, or a list of them (an
            ensemble; checked with :func:`check_ensemble`, which raises ``ValueError``).
        settings: the ``inference`` config's settings (:class:`~lightning_brats.inference.sliding_window.InferenceSettings`):
            sliding-window ``overlap`` and ``sw_batch_size``, ``flip_tta`` (all flip combinations,
            8 in 3D, 4 in 2D), ``threshold`` and ``precision`` (``"auto"``: bf16 autocast where the
            device runs bf16 natively, else fp32; see :func:`~lightning_brats.training.hardware.inference_precision`).
        postprocess: the connected-component rules (:class:`PostProcessing`); ``None`` for none (see
            :func:`postprocessing_for`).

    Raises:
        ValueError: an unknown ``settings.precision``.
    """

    def __init__(
        self,
        model: TrainedModel | Sequence[TrainedModel],
        settings: InferenceSettings,
        postprocess: PostProcessing | None = None,
    ) -> None:
        self.models = [model] if isinstance(model, TrainedModel) else list(model)
        if not self.models:
            raise ValueError("Predictor needs at least one model")
        check_ensemble(self.models)
        self.model = self.models[0]  # its data config serves all: the models agree on it
        self.settings = settings
        self.postprocess = postprocess
        self.precision = inference_precision(settings.precision, self.model.device)

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.model.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def predict_case(self, files: CaseSource) -> CasePrediction:
        """Predict one case.

        Raises:
            DataError: a modality file is missing, corrupt or off-grid (the message names it).
        """
        start = time.perf_counter()
        preprocessing = self.model.preprocessing
        case = load_case(files, preprocessing.modalities, read_label=False)
        image, _, record = preprocess_case(case, preprocessing)
        total = None
        for model in self.models:
            tensor = torch.from_numpy(image)[None].to(model.device)
            with torch.no_grad(), self._autocast():
                probs = predict_probabilities(
                    model.net, tensor, model.patch_size, self.settings.overlap, self.settings.sw_batch_size,
                    self.settings.flip_tta, model.context_slices,
                )
            probs = probs[0].float().cpu()
            total = probs if total is None else total + probs
        # thresholds, labels and post-processing run inside the crop box (outside it every probability is 0,
        # so no label and no component changes); only the uint8 label map is placed on the whole grid
        probs = resample_to_crop((total / len(self.models)).numpy(), record, order=1)
        box_label, relabelled = probabilities_to_labels(probs, self.model.regions, self.settings, self.postprocess)
        label = uncrop(box_label, record, fill=0)
        return CasePrediction(files.case_id, label, probs, case, record, time.perf_counter() - start, relabelled)


def probabilities_to_labels(
    probs: np.ndarray,
    regions: Mapping[str, Sequence[int]],
    settings: InferenceSettings,
    postprocess: PostProcessing | None,
) -> tuple[np.ndarray, int]:
    """Threshold region probabilities, nest the regions into labels and post-process: the last steps of
    :meth:`Predictor.predict_case`, shared with ``lightning-brats tune-postprocessing`` so the rule chosen
    there is the rule applied here.

    Args:
        probs: ``(R, X, Y, Z)`` probabilities in the order of ``regions``.
        regions: region name -> label codes.
        settings: gives the threshold per region (:meth:`InferenceSettings.thresholds`).
        postprocess: the connected-component rules (:class:`PostProcessing`), or ``None``.

    Returns:
        ``((X, Y, Z)`` uint8 label map, voxels the post-processing relabelled``)``.
    """
    thresholds = np.asarray(settings.thresholds(list(regions)), dtype=probs.dtype).reshape(-1, *[1] * (probs.ndim - 1))
    label = regions_to_labels(probs > thresholds, regions)
    if postprocess is None:
        return label, 0
    return postprocess.apply(label, regions)


def reference_header(files: CaseSource) -> nib.Nifti1Header | None:
    """The NIfTI header of the case's first modality file (its geometry), or ``None`` for non-NIfTI input."""
    first = files.sources()[0]
    if first.is_file() and first.name.endswith((".nii", ".nii.gz")):
        return nib.load(str(first)).header
    return None


def write_nifti(array: np.ndarray, case: LoadedCase, path: Path, description: str = "") -> None:
    """Write ``array`` atomically as NIfTI with the input's affine and header geometry.

    The header is copied from the case's first modality file (qform/sform codes, pixel
    dimensions, units), so viewers overlay the output on the input; the data type follows
    ``array``. Non-NIfTI inputs (TIFF slices) get a header made from the affine.

    Args:
        array: ``(X, Y, Z)`` or ``(X, Y, Z, R)``, on the case's original grid.
        case: the case the array belongs to.
        path: the output file (``.nii.gz`` or ``.nii``).
        description: stored in the header's ``descrip`` (at most 80 characters).
    """
    header = reference_header(case.files)
    header = None if header is None else header.copy()
    image = nib.Nifti1Image(array, case.affine, header)
    image.set_data_dtype(array.dtype)
    if header is not None:  # the input's qform/sform codes with its affine (a code of 0 stays 0)
        qform, sform = int(header["qform_code"]), int(header["sform_code"])
        image.set_qform(case.affine, qform)
        image.set_sform(case.affine, sform or (0 if qform else 2))  # both 0 would lose the affine
    image.header["descrip"] = description[:80].encode()
    atomic_save(path, lambda p: nib.save(image, str(p)))


def output_paths(output_dir: Path, case_id: str) -> dict[str, Path]:
    """Where a case's files go: ``label`` ``<case>.nii.gz`` and ``probabilities`` ``<case>_probabilities.nii.gz``."""
    return {"label": output_dir / f"{case_id}.nii.gz", "probabilities": output_dir / f"{case_id}_probabilities.nii.gz"}


def check_not_inputs(outputs: Sequence[Path], cases: Sequence[CaseSource]) -> None:
    """Refuse to write over any input file.

    Raises:
        ValueError: an output path is one of the cases' source files (names both).
    """
    sources = {p.resolve(): c.case_id for c in cases for p in c.sources()}
    for out in outputs:
        if out.resolve() in sources:
            raise ValueError(f"output {out} would overwrite an input file of case {sources[out.resolve()]}; choose another output_dir")


def files_from_paths(files: Mapping[str, str], modalities: Sequence[str], case_id: str | None = None) -> CaseFiles:
    """A case given as explicit modality files (``files={flair: ..., t1: ..., ...}``).

    Args:
        files: modality name -> NIfTI path.
        modalities: the modalities the network needs.
        case_id: the output's name; default: what the file names share up to their last ``_``,
            ``-`` or ``.`` (``BraTS20_Training_001_{flair,t1,t1ce,t2}.nii`` -> ``BraTS20_Training_001``),
            or the name without extension when one file holds every modality.

    Raises:
        DataError: a needed modality is not given, or a given file does not exist.
    """
    missing = [m for m in modalities if m not in files]
    if missing:
        raise DataError(f"files= lacks modality {missing}: the model needs {list(modalities)}, got {sorted(files)}")
    images = {m: Path(files[m]) for m in modalities}
    for modality, path in images.items():
        if not path.is_file():
            raise DataError(f"files.{modality}={path}: no such file")
    if case_id is None:
        case_id = _shared_stem([p.name for p in images.values()])
    return CaseFiles(case_id, images)


def _shared_stem(names: Sequence[str]) -> str:
    stems = [n[: -len(".nii.gz")] if n.endswith(".nii.gz") else Path(n).stem for n in names]
    if len(set(stems)) == 1:
        return stems[0]
    prefix = os.path.commonprefix(stems)
    cut = max(prefix.rfind(sep) for sep in "_-.")
    return prefix[:cut] if cut > 0 else prefix or stems[0]
