"""Every data x model config composes and instantiates; mismatches fail with clear errors."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest

from lightning_brats.cli.train import CONFIG_DIR
from tests.conftest import compose_config

DATA = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))
MODELS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
def test_data_model_configs_instantiate(data, model, tmp_path):
    sampling = "2d" if model.endswith("2d") else "3d"
    cfg = compose_config([f"data={data}", f"model={model}", f"data.sampling={sampling}", "data.root=/nonexistent"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    assert datamodule.sampling == sampling
    assert datamodule.region_names == ["wt", "tc", "et"]
    assert module.net.spatial_dims == int(sampling[0])
    # input channels follow data.modalities, outputs the regions
    assert module.net.encoder[0][0][0].in_channels == len(cfg.data.modalities) == 4
    assert module.net.head.out_channels == 3
    module.configure_for(datamodule.region_names, datamodule.patch_size, datamodule.modalities)
    for callback in cfg.callbacks.values():
        hydra.utils.instantiate(callback)


def test_modalities_subset_changes_input_channels(tmp_path):
    cfg = compose_config(["data=brats20", "data.root=/x", "data.modalities=[flair,t1ce,t2]"], tmp_path)
    assert hydra.utils.instantiate(cfg.model).net.encoder[0][0][0].in_channels == 3


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", "data.root=/x"], tmp_path)
    hydra.utils.instantiate(cfg.data)
    hydra.utils.instantiate(cfg.model)
    hydra.utils.instantiate(cfg.trainer)


def test_model_dimension_must_match_sampling(tmp_path):
    cfg = compose_config(["data=brats20", "data.root=/x", "model=unet2d", "data.sampling=3d"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    with pytest.raises(ValueError, match="U-Net is 2D: set data.sampling=2d"):
        module.configure_for(datamodule.region_names, datamodule.patch_size, datamodule.modalities)


def test_indivisible_patch_size_is_an_error_naming_it(tmp_path):
    cfg = compose_config(["data=brats20", "data.root=/x", "data.patch_size=[100,96,96]", "model.net.depth=5"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    with pytest.raises(ValueError, match=r"patch size \[100, 96, 96\] is not divisible by 2\*\*\(depth-1\) = 16.*\[96, 96, 96\]"):
        module.configure_for(datamodule.region_names, datamodule.patch_size, datamodule.modalities)
