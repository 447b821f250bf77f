"""Shared fixtures: composing the real configs (as lightning-hydra-template's tests do) and
locating the real BraTS cases in ``../shared/data`` (tests fail loudly when they are missing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import lightning_brats  # noqa: F401
from lightning_brats.cli.train import CONFIG_DIR
from lightning_brats.data.data_config import upgrade_overrides
from lightning_brats.data.readers import BratsFolderReader

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIGHTNING_BRATS_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def _share_the_cpus_between_xdist_workers() -> None:
    """Under pytest-xdist (``-n auto``), give each worker its share of the CPUs, not all of them.

    PyTorch (and train.py, :func:`~lightning_brats.training.hardware.configure_threads`) would give every
    worker's thread pool every CPU; N workers on N cores then run N x N threads that spin against each
    other. ``OMP_NUM_THREADS`` carries the share to the worker's own PyTorch, to train.py run in-process
    and to the subprocesses the tests start.
    """
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    from lightning_brats.training.hardware import available_cpus

    share = max(1, available_cpus() // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)


_share_the_cpus_between_xdist_workers()


def _require(path: Path) -> Path:
    if not path.is_dir():
        pytest.fail(
            f"real data missing: {path} does not exist. Tests marked real_data need ../shared/data beside the "
            "checkout; deselect them explicitly with -m 'not real_data'.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def brats2018_root() -> Path:
    """The 20 real BraTS 2018 cases."""
    return _require(SHARED_DATA / "brats2018")


@pytest.fixture(scope="session")
def lgg_root() -> Path:
    """The 6 real LGG patients (Buda et al.), one folder of TIFF slices each."""
    return _require(SHARED_DATA / "lgg_kaggle_3m")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One preprocessing cache for the whole test session (preprocessing is done once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small synthetic dataset written once per session."""
    from lightning_brats.data.phantoms import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, num_cases=8, shape=(64, 64, 48))
    return root


def compose_config(overrides: list[str], output_dir: Path, cache_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` with overrides, outputs in ``output_dir``, CPU only; flat ``data`` keys
    (``data.spacing=...``) are read as the commands read them (:func:`~lightning_brats.data.data_config.upgrade_overrides`)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=upgrade_overrides(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        cfg.paths.data_dir = str(output_dir / "data")
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
        cfg.trainer.accelerator = "cpu"
        cfg.data.num_workers = 0
    return cfg


@pytest.fixture(scope="session")
def real_datamodule(brats2018_root, cache_dir, tmp_path_factory):
    """The ``experiment=brats_cpu_3d`` datamodule on the real cases, prepared (2 mm cache) and set up."""
    import hydra

    cfg = compose_config(
        ["experiment=brats_cpu_3d", f"data.root={brats2018_root}"], tmp_path_factory.mktemp("dm"), cache_dir
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


#: Steps of the session's brats_cpu model (batches of 8 slices), and the wall-clock guard they must
#: fit in on any CPU (the full-width U-Net the preset trained before took about 1.2 s a step on a 2-core
#: AVX2-only EPYC in fp32; the half-width one a third of that).
TRAINED_RUN_STEPS = 240
TRAINED_RUN_GUARD = "00:00:10:00"


@pytest.fixture(scope="session")
def trained_brats_run(brats2018_root, cache_dir, tmp_path_factory):
    """240 steps of the brats_cpu preset (2D U-Net on axial slices, batches of 8) on the real cases, in
    the precision the machine runs fastest, trained once per session: ``(run folder, final metrics)``;
    its ``checkpoints/last.ckpt`` serves the prediction tests. Bounded by steps, with a 10-minute guard
    (``trainer.max_time``) that fails the fixture loudly, naming the steps reached, on a machine too
    slow for the suite."""
    import torch

    from lightning_brats.cli.train import train

    out = tmp_path_factory.mktemp("brats_cpu_run")
    cfg = compose_config(
        ["experiment=brats_cpu", f"data.root={brats2018_root}", "logger=csv", f"trainer.max_steps={TRAINED_RUN_STEPS}",
         "data.batch_size=8", "validate_best=false", f"trainer.max_time={TRAINED_RUN_GUARD}"],
        out, cache_dir,
    )
    metrics = train(cfg)
    steps = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)["global_step"]
    if steps < TRAINED_RUN_STEPS:
        pytest.fail(
            f"trained_brats_run: only {steps} of {TRAINED_RUN_STEPS} steps of experiment=brats_cpu fit in the "
            f"{TRAINED_RUN_GUARD} guard on this machine ({cfg.trainer.precision}); the suite would not fit CI's time",
            pytrace=False,
        )
    return out, metrics


def _train_on_phantoms(phantom_root: Path, out: Path, extra: list[str]) -> Path:
    from lightning_brats.cli.train import train

    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.samples_per_epoch=4",
         "data.patch_size=[32,32,32]", "trainer.max_epochs=1", "logger=csv", "model.net.base_filters=8", *extra],
        out, out / "cache",
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def phantom_checkpoint(phantom_root, tmp_path_factory) -> Path:
    """A 3D U-Net checkpoint trained for one short epoch on the phantoms: 4 modalities, 3 regions."""
    return _train_on_phantoms(phantom_root, tmp_path_factory.mktemp("ckpt_run"), [])


@pytest.fixture(scope="session")
def phantom_checkpoint_2d(phantom_root, tmp_path_factory) -> Path:
    """A 2D U-Net checkpoint (axial slices) trained for one short epoch on the phantoms."""
    return _train_on_phantoms(phantom_root, tmp_path_factory.mktemp("ckpt_run_2d"), ["model=unet2d", "data.sampling=2d", "model.net.depth=3"])


@pytest.fixture(scope="session")
def phantom_checkpoint_25d(phantom_root, tmp_path_factory) -> Path:
    """A 2.5D U-Net checkpoint (axial slices with one neighbour on each side, ``data.context_slices=1``: 12
    input channels) trained for one short epoch on the phantoms."""
    return _train_on_phantoms(phantom_root, tmp_path_factory.mktemp("ckpt_run_25d"),
                              ["model=unet2d", "data.sampling=2d", "model.net.depth=3", "data.context_slices=1"])


def compose_tool_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` (``predict`` or ``eval``) with outputs in ``output_dir``, CPU only."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=upgrade_overrides([f"paths.output_dir={output_dir}", "inference.device=cpu", *overrides]))
    return cfg


def require_extra(extra: str, module: str):
    """Import ``module`` from an optional extra of the test install (``.[test]``, .ci/run) and return it.

    Fails (does not skip) when it is missing, naming the extra to install: a test of an extra that the
    test install provides must not pass silently on a machine that lacks it.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is missing ({exc}); install the extra: pip install -e .[{extra}]", pytrace=False)


def require_export_extra() -> None:
    """Fail (not skip) when the ``export`` extra, part of the test install (.ci/run), is missing."""
    for module in ("onnx", "onnxruntime"):
        require_extra("export", module)


def inference_settings(**overrides):
    """The default ``inference`` config (``conf/inference/default.yaml``) on the CPU, with ``overrides``."""
    from omegaconf import OmegaConf

    from lightning_brats.inference.sliding_window import InferenceSettings

    config = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "inference" / "default.yaml"))
    return InferenceSettings.from_config({**config, "device": "cpu", **overrides})


# --- slow tests: whatever trains is marked slow, so `pytest -m "not slow"` stays under a minute ---------

#: Fixtures that train a model (in-process or through ``train.py``): a test using one, directly or
#: through another fixture, trains and must be marked ``slow``.
TRAINING_FIXTURES = frozenset(
    {"trained_brats_run", "phantom_checkpoint", "phantom_checkpoint_2d", "phantom_checkpoint_25d", "fold_multirun"}
)


def pytest_collection_modifyitems(config, items):
    """Refuse the session when a test needing a training fixture is not marked ``slow``."""
    unmarked = [item.nodeid for item in items
                if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests use a training fixture but are not marked @pytest.mark.slow: "
                                + ", ".join(unmarked))


def _starts_python(args) -> bool:
    """Whether a ``subprocess.Popen`` argument list starts this Python (``train.py``, ``-c``, ``-m``...)."""
    import sys

    if isinstance(args, (str, bytes, os.PathLike)):
        return False  # a shell string or a bare program: not this interpreter's scripts
    args = [str(a) for a in args]
    return bool(args) and Path(args[0]).resolve() == Path(sys.executable).resolve()


@pytest.fixture(autouse=True)
def _only_slow_tests_train(request, monkeypatch):
    """A test not marked ``slow`` that reaches ``Trainer.fit`` in this process, or starts a Python
    subprocess (``train.py``, ``predict.py``, ``eval.py``, ``python -c``: each imports torch, seconds
    of CPU), fails, naming itself: those are integration tests, run by ``.ci/run``."""
    if request.node.get_closest_marker("slow") is None:
        import subprocess

        import pytorch_lightning as pl

        def refuse(*args, **kwargs):
            pytest.fail(f"{request.node.nodeid} trains (Trainer.fit) but is not marked @pytest.mark.slow", pytrace=False)

        monkeypatch.setattr(pl.Trainer, "fit", refuse)
        popen_init = subprocess.Popen.__init__

        def refuse_python(self, args, *rest, **kwargs):
            if _starts_python(args):
                pytest.fail(f"{request.node.nodeid} starts a Python subprocess ({' '.join(map(str, args[:3]))} ...) "
                            "but is not marked @pytest.mark.slow", pytrace=False)
            popen_init(self, args, *rest, **kwargs)

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse_python)



@pytest.fixture(autouse=True)
def _no_wandb_run_left_active(request):
    """A test that leaves a W&B run active fails, naming itself, and the run is finished: in a script, W&B's
    ``wandb.init`` returns the run still active ("return_previous"), so the next test's W&B logger in this
    process would log into that run's folder, not its own (a failure in whichever test came next)."""
    yield
    import sys

    wandb = sys.modules.get("wandb")  # never imported here: only a test that used W&B can have left a run
    if wandb is not None and getattr(wandb, "run", None) is not None:
        folder = getattr(wandb.run, "dir", "?")
        wandb.finish()
        pytest.fail(f"{request.node.nodeid} left a W&B run active ({folder}): train/eval must finish it", pytrace=False)

# --- shared BraTS constants and helpers (import them from here, never from another test module) -----

#: The four MRI sequences of BraTS 2018-2021, in the file-suffix order of the configs.
BRATS_MODALITIES = ["flair", "t1", "t1ce", "t2"]
#: BraTS 2018-2021 label codes: 1 necrosis/non-enhancing core, 2 oedema, 4 enhancing tumour.
BRATS20_LABELS = {"ncr_net": 1, "ed": 2, "et": 4}
#: The three nested evaluation regions in each release's label codes (MSD Task01: 1 oedema,
#: 2 non-enhancing tumour, 3 enhancing tumour).
BRATS20_REGIONS = {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}
BRATS23_REGIONS = {"wt": [1, 2, 3], "tc": [1, 3], "et": [3]}
MSD_REGIONS = {"wt": [1, 2, 3], "tc": [2, 3], "et": [3]}
#: The BraTS 2018-2020 file layout: ``<case>/<case>_<suffix>.nii.gz``.
BRATS20_LAYOUT = BratsFolderReader({m: f"_{m}" for m in BRATS_MODALITIES}, "_seg", [".nii.gz", ".nii"])
#: BraTS's HD95 for a region present in only one of prediction and truth: the diagonal of the
#: 240 x 240 x 155 1-mm volume, sqrt(240^2 + 240^2 + 155^2) = 373.13 mm.
BRATS_HD95_PENALTY_MM = round((240**2 + 240**2 + 155**2) ** 0.5, 2)
#: Real BraTS 2018 cases the release-layout tests rebuild in other layouts.
SOURCE_CASES = ["Brats18_2013_11_1", "Brats18_CBICA_ABM_1"]


def copy_case(src: Path, dst_root: Path) -> Path:
    """Symlink a real case folder into ``dst_root`` (the shared data are never modified); the new folder."""
    dst = dst_root / src.name
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    return dst


def real_label(root: Path, case: str):
    """The ``(X, Y, Z)`` label map of a real BraTS 2018 case, as stored (codes 0, 1, 2, 4)."""
    import nibabel as nib
    import numpy as np

    return np.asarray(nib.load(root / case / f"{case}_seg.nii.gz").dataobj)


#: Every model= variant, its dimensionality and overrides that make it small (tests build them untrained).
MODEL_VARIANTS = [
    ("unet2d", 2, ["model.net.depth=3", "model.net.base_filters=8"]),
    ("unet3d", 3, ["model.net.depth=3", "model.net.base_filters=8"]),
    ("resunet2d", 2, ["model.net.depth=3", "model.net.base_filters=8"]),
    ("resunet3d", 3, ["model.net.depth=3", "model.net.base_filters=8"]),
    ("attention_unet2d", 2, ["model.net.depth=3", "model.net.base_filters=8"]),
    ("attention_unet3d", 3, ["model.net.depth=3", "model.net.base_filters=8"]),
    ("unet2d_ds", 2, ["model.net.depth=4", "model.net.base_filters=8"]),
    ("unet3d_ds", 3, ["model.net.depth=4", "model.net.base_filters=8"]),
    ("segresnet", 3, ["model.net.init_filters=8"]),
    ("swinunetr", 3, ["model.net.feature_size=12"]),
    ("dynunet", 3, ["model.net.filters=[8,16,32,64]"]),
    # the 2024 networks: the full-size configs narrowed, the CPU-size ones as they are
    ("resencunet2d", 2, ["model.net.n_stages=4", "model.net.base_filters=4"]),
    ("resencunet3d", 3, ["model.net.n_stages=4", "model.net.base_filters=4"]),
    ("resencunet2d_cpu", 2, []),
    ("resencunet3d_cpu", 3, []),
    ("mednext2d", 2, ["model.net.init_filters=4", "model.net.downsamplings=2"]),
    ("mednext", 3, ["model.net.init_filters=4", "model.net.downsamplings=2"]),
    ("mednext2d_cpu", 2, []),
    ("mednext_cpu", 3, []),
]


# --- a CUDA machine, faked on a CPU ------------------------------------------------------------------


class FakeCudaEvent:
    """``torch.cuda.Event`` on the host clock: ``record()`` notes the time, ``elapsed_time`` gives
    milliseconds as CUDA's does, and raises as CUDA's does when either event was never recorded."""

    def __init__(self, enable_timing: bool = False, **kwargs) -> None:
        self.enable_timing, self.at = enable_timing, None

    def record(self, stream=None) -> None:
        import time

        self.at = time.perf_counter()

    def elapsed_time(self, end: FakeCudaEvent) -> float:
        if not (self.enable_timing and end.enable_timing) or self.at is None or end.at is None:
            raise RuntimeError("CUDA error: device not ready (an event was not recorded with enable_timing=True)")
        return (end.at - self.at) * 1000

    def synchronize(self) -> None:
        pass


class FakeCuda:
    """What :func:`fake_cuda` installs, and the calls made to it (``calls``: ``(name, device)``)."""

    def __init__(self, monkeypatch, name: str = "NVIDIA H200", bf16: bool = True) -> None:
        from types import SimpleNamespace

        import torch
        from torch.cuda._utils import _get_device_index

        self.name, self.bf16, self.calls, self.peak_bytes, self.total_bytes = name, bf16, [], 3 * 2**30, 140 * 2**30

        def index(device):
            # torch's own check: a CPU device (as a module has after Lightning's teardown) raises
            # "ValueError: Expected a cuda device, but got: cpu", as on a GPU machine
            return 0 if device is None else _get_device_index(device, optional=True)

        def recorded(fn_name, result=None):
            def fake(device=None, *args, **kwargs):
                self.calls.append((fn_name, device))
                index(device)
                return result() if callable(result) else result
            return fake

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: self.bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", recorded("get_device_name", lambda: self.name))
        monkeypatch.setattr(torch.cuda, "synchronize", recorded("synchronize"))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", recorded("reset_peak_memory_stats"))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", recorded("max_memory_allocated", lambda: self.peak_bytes))
        monkeypatch.setattr(torch.cuda, "Event", FakeCudaEvent)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            recorded("get_device_properties", lambda: SimpleNamespace(name=self.name, total_memory=self.total_bytes)))

    def count(self, name: str) -> int:
        return sum(1 for called, _ in self.calls if called == name)


@pytest.fixture
def fake_cuda(monkeypatch) -> FakeCuda:
    """The CUDA API of a one-GPU machine (an H200 with bf16) on this CPU, with the real API's contract
    where the code under test can get it wrong: ``get_device_name``, ``synchronize``,
    ``max_memory_allocated`` and ``reset_peak_memory_stats`` raise ``ValueError`` for a CPU device
    (torch's own device check), ``Event.elapsed_time`` raises for an unrecorded event. Tensors stay on
    the CPU: drive CUDA branches with a ``cuda`` device object (e.g. :func:`cuda_strategy`)."""
    return FakeCuda(monkeypatch)


def cuda_strategy(trainer, monkeypatch) -> None:
    """Make ``trainer.strategy.root_device`` say ``cuda:0`` (what a GPU run's strategy says from start
    to end, while Lightning moves the module back to the CPU before ``on_fit_end``)."""
    import torch

    monkeypatch.setattr(trainer.strategy, "_root_device", torch.device("cuda", 0), raising=False)
