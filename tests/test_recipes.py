"""Every recipe in ``conf/experiment/`` composes and trains one ``fast_dev_run`` step on real cases in
its own release's layout, and the seed-system recipes hold the settings they reproduce.

The BraTS 2020/2021/2023 and MSD Task01 layouts are built in temporary folders from the shared
BraTS 2018 cases by ``tests.release_layouts`` (which is tested here too); LGG recipes read
the shared LGG patients as they are. Runs are shrunk to 4 mm voxels, small patches and batches of 2.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf
from torch import nn

from lightning_brats.cli.train import CONFIG_DIR, train
from lightning_brats.data.data_config import MOVED_KEYS
from lightning_brats.data.labels import labels_to_regions
from lightning_brats.data.readers import load_case
from tests import release_layouts
from tests.conftest import BRATS20_REGIONS, BRATS_MODALITIES, REPO, compose_config, real_label

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
SEEDS = [e for e in EXPERIMENTS if e.startswith("seed_")]

#: 5 source cases: the 5-fold recipes need at least as many cases as folds
SOURCE_CASES = ["Brats18_2013_11_1", "Brats18_CBICA_ABM_1", "Brats18_CBICA_AME_1", "Brats18_TCIA02_135_1", "Brats18_TCIA10_637_1"]




@pytest.fixture(scope="module")
def data_root(brats2018_root, lgg_root, tmp_path_factory):
    """``data_root(<data config name>)``: a folder in that release's layout (built once per module)."""
    built: dict[str, Path] = {}

    def root(data: str) -> Path:
        if data == "lgg":
            return lgg_root
        if data not in release_layouts.RELEASES:
            pytest.fail(f"no real data for data={data}: add a builder to tests/test_recipes.py::data_root")
        if data not in built:
            out = tmp_path_factory.mktemp(f"layout_{data}")
            release_layouts.build(brats2018_root, out, data, SOURCE_CASES)
            built[data] = out
        return built[data]

    return root


def _convs(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]


# ---------------------------------------------------------------------------------------------
# the seed-system recipes hold their seed system's settings (no data needed)

SEED_SETTINGS = {
    "seed_2d_brats20": {"data": "brats20", "model": "unet2d", "sampling": "2d", "modalities": BRATS_MODALITIES,
                        "regions": BRATS20_REGIONS},
    "seed_3d_msd": {"data": "msd_task01", "model": "unet3d", "sampling": "3d", "modalities": BRATS_MODALITIES,
                    "regions": {"wt": [1, 2, 3], "tc": [2, 3], "et": [3]}, "num_folds": 5, "fold": 0},
    "seed_3d_brats21_3mod": {"data": "brats21", "model": "unet3d", "sampling": "3d", "modalities": ["flair", "t1ce", "t2"],
                             "crop": "center", "crop_size": [128, 128, 128], "patch_size": [128, 128, 128]},
    "seed_2d_lgg": {"data": "lgg", "model": "unet2d", "sampling": "2d", "regions": {"abnormality": [255]}},
    "seed_3d_brats20_minmax": {"data": "brats20", "model": "unet3d", "sampling": "3d", "modalities": ["flair", "t1ce", "t2"],
                               "normalization": "minmax", "crop": "center", "crop_size": [128, 128, 128],
                               "min_foreground_fraction": 0.01},
}


def test_every_seed_recipe_is_checked():
    assert sorted(SEED_SETTINGS) == SEEDS


@pytest.mark.parametrize("name", sorted(SEED_SETTINGS))
def test_seed_recipe_holds_its_settings(name, tmp_path):
    expected = dict(SEED_SETTINGS[name])
    cfg = compose_config([f"experiment={name}", "data.root=/x"], tmp_path)
    choices = cfg.hydra.runtime.choices
    assert (choices.data, choices.model, choices.trainer) == (expected.pop("data"), expected.pop("model"), "gpu")
    assert cfg.task_name == name and name in cfg.tags and "seed" in cfg.tags
    for key, value in expected.items():  # each in its part of the data config (data.preprocessing.crop, ...)
        actual = OmegaConf.select(cfg.data, MOVED_KEYS.get(key, key))
        assert (actual if isinstance(actual, (str, int, float)) else _plain(actual)) == value, key
    # the recipe's modalities are the network's input channels, its regions the outputs
    convs = _convs(hydra.utils.instantiate(cfg.model).net)
    assert convs[0].in_channels == len(cfg.data.preprocessing.modalities)
    assert convs[-1].out_channels == len(cfg.data.release.regions)
    # documented next to it: the full-size command, the CPU-sized command, the measured result
    readme = (REPO / "experiments" / name / "README.md").read_text()
    assert f"python train.py experiment={name}" in readme and "trainer=cpu" in readme


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True)


# ---------------------------------------------------------------------------------------------
# tests.release_layouts (experiments/build_layouts.py)


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("release", release_layouts.RELEASES)
def test_built_layout_reads_like_the_source(release, data_root, brats2018_root, tmp_path):
    """The built release finds every case, with the source's images and WT/TC/ET regions."""
    root = data_root(release)
    cfg = compose_config([f"data={release}", f"data.root={root}"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    cases = datamodule.find_cases()
    with open(root / "sources.csv") as handle:
        sources = {row["case_id"]: row["source_case"] for row in csv.DictReader(handle)}
    assert [c.case_id for c in cases] == sorted(sources) and sorted(sources.values()) == SOURCE_CASES
    for files in cases[:2]:
        src = sources[files.case_id]
        case = load_case(files, datamodule.modalities, datamodule.labels)
        images = np.stack([nib.load(brats2018_root / src / f"{src}_{m}.nii.gz").get_fdata(dtype=np.float32) for m in BRATS_MODALITIES])
        label = real_label(brats2018_root, src)
        np.testing.assert_array_equal(case.image, images)
        np.testing.assert_array_equal(labels_to_regions(case.label, datamodule.regions), labels_to_regions(label, BRATS20_REGIONS))
    if release == "brats21":  # symlinks into the source, nothing copied
        assert all(p.is_symlink() and brats2018_root.resolve() in p.resolve().parents for p in cases[0].sources())
    if release == "brats20":  # Kaggle's uncompressed .nii
        assert {p.suffix for p in cases[0].sources()} == {".nii"}
    if release == "msd_task01":  # MSD's codes and channel names
        task = root / "Task01_BrainTumour"
        meta = json.loads((task / "dataset.json").read_text())
        assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"} and meta["numTraining"] == 5
        assert set(np.unique(nib.load(task / "labelsTr" / "BRATS_001.nii.gz").dataobj)) == {0, 1, 2, 3}
        assert nib.load(task / "imagesTr" / "BRATS_001.nii.gz").shape == (240, 240, 155, 4)


@pytest.mark.real_data
def test_build_layouts_cli_and_refusals(brats2018_root, tmp_path, capsys):
    out = tmp_path / "brats21"
    release_layouts.main(["--source", str(brats2018_root), "--out", str(out), "--release", "brats21",
                        "--cases", SOURCE_CASES[0]])
    assert "brats21: 1 cases" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "BraTS2021_00001").iterdir()) == [
        f"BraTS2021_00001_{p}.nii.gz" for p in ["flair", "seg", "t1", "t1ce", "t2"]
    ]
    release_layouts.build(brats2018_root, out, "brats21", SOURCE_CASES[:1])  # a re-run keeps what is there
    with pytest.raises(ValueError, match="must not contain each other"):
        release_layouts.build(brats2018_root, brats2018_root / "layouts", "brats21")
    with pytest.raises(FileNotFoundError, match="no labelled case folders"):
        release_layouts.build(brats2018_root, tmp_path / "x", "brats21", ["Brats18_nonexistent"])


@pytest.mark.slow  # a Python process of its own
@pytest.mark.real_data
def test_build_layouts_script_is_a_thin_wrapper(brats2018_root, tmp_path):
    """``python experiments/build_layouts.py``: the same command line as the package's builder."""
    wrapper = subprocess.run([sys.executable, "experiments/build_layouts.py", "--source", str(brats2018_root), "--out",
                              str(tmp_path / "men_rt"), "--release", "brats_men_rt", "--cases", SOURCE_CASES[0]],
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False)
    assert wrapper.returncode == 0, wrapper.stderr[-2000:]
    assert "brats_men_rt: 1 cases" in wrapper.stdout
    assert (tmp_path / "men_rt" / "BraTS-MEN-RT-0001-1" / "BraTS-MEN-RT-0001-1_gtv.nii.gz").is_file()


# ---------------------------------------------------------------------------------------------
# every recipe trains one step


#: the published GPU recipes (the papers' networks at 128^3) run narrowed, with patches their depth
#: takes (a bottleneck of 2 voxels per axis), and are slow on a CPU all the same
GPU_RECIPES = {
    "brats_nnunet": ["model.net.base_filters=4", "data.patch_size=[64,64,64]"],
    "brats_nvidia": ["model.net.filters=[4,4,8,8,16,16,16]", "data.patch_size=[128,128,128]"],
    "brats_resenc_m": ["model.net.base_filters=4", "data.patch_size=[64,64,64]"],
    "brats_resenc_l": ["model.net.base_filters=4", "data.patch_size=[64,64,64]"],
    "brats_mednext": ["model.net.init_filters=4", "model.net.size=S", "data.patch_size=[32,32,32]"],
}


def _small(cfg) -> list[str]:
    """Overrides that shrink a recipe to one quick step: 4 mm voxels (in-plane for 2D slices), small patches."""
    if cfg.hydra.runtime.choices.data == "lgg":
        return ["data.spacing=[4,4,1]", "data.patch_size=[64,64]"]
    patch = "[64,64]" if cfg.data.sampling == "2d" else "[32,32,32]"
    gpu_recipe = GPU_RECIPES.get(cfg.hydra.runtime.choices.experiment, [])
    return ["data.spacing=[4,4,4]", f"data.patch_size={patch}", *gpu_recipe]


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize(
    "experiment", [pytest.param(e, marks=pytest.mark.slow) if e in GPU_RECIPES else e for e in EXPERIMENTS]
)
def test_experiment_trains_a_fast_dev_run_step(experiment, data_root, cache_dir, tmp_path, caplog):
    probe = compose_config([f"experiment={experiment}", "data.root=/x"], tmp_path / "probe")
    root = data_root(probe.hydra.runtime.choices.data)
    cfg = compose_config(
        [f"experiment={experiment}", f"data.root={root}", "debug=fast_dev_run", "logger=csv", "data.batch_size=2",
         "data.preprocess_workers=1", *_small(probe)],
        tmp_path / "run", cache_dir,
    )
    caplog.set_level(logging.INFO)
    metrics = train(cfg)

    regions = list(cfg.data.release.regions)
    dice = {f"val/dice_{r}" for r in [*regions, "mean"]}
    assert {"train/loss", *dice} <= set(metrics), sorted(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in dice) and math.isfinite(metrics["train/loss"])
    per_region = [metrics[k] for k in sorted(dice) if k != "val/dice_mean"]
    assert metrics["val/dice_mean"] == pytest.approx(sum(per_region) / len(per_region), abs=1e-6)
    # the recipe's modalities reach the network's input channels, in the configured patch
    channels, patch = len(cfg.data.preprocessing.modalities), list(cfg.data.patch_size)[: int(cfg.data.sampling[0])]
    assert f"input {[2, channels, *patch]} -> output {[2, len(regions), *patch]}" in caplog.text

    # what was cached is what the recipe asks for
    datamodule = hydra.utils.instantiate(cfg.data)
    case = datamodule.cache.load(datamodule.find_cases()[0].case_id)
    assert case.image.shape[0] == channels
    if cfg.data.preprocessing.crop == "center":
        size = list(cfg.data.preprocessing.crop_size)
        assert case.record["cropped_shape"] == size
        assert list(case.image.shape[1:]) == [round(s / 4) for s in size]  # 128 voxels of 1 mm at 4 mm
        box = np.asarray(case.record["crop_box"])
        assert np.all(np.abs(box.sum(axis=1) - np.asarray(case.record["original_shape"])) <= 1)  # centred
    if cfg.data.preprocessing.normalization == "minmax":
        image = np.asarray(case.image)
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5
    if cfg.data.min_foreground_fraction:
        assert f"data.min_foreground_fraction={cfg.data.min_foreground_fraction}: dropped" in caplog.text
    # the case-level split: fold `fold` of `num_folds` holds out about 1/num_folds of the cases
    folds = json.loads((tmp_path / "run" / "splits.json").read_text())["folds"]
    fold = folds[cfg.data.fold]
    total = len(fold["train"]) + len(fold["val"])
    assert len(folds) == cfg.data.num_folds and len(fold["val"]) == math.ceil(total / cfg.data.num_folds)
