"""Every data x model config composes and instantiates; mismatches fail with clear errors."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra.errors import InstantiationException
from torch import nn

from lightning_brats.cli.train import CONFIG_DIR, choose_precision_and_threads
from tests.conftest import compose_config

DATA = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))
MODELS = sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


#: regions (output channels) and input channels of the data configs that differ from WT/TC/ET and 4 modalities
CHANNELS = {
    "lgg": (["abnormality"], 3),
    "brats24_gli": (["wt", "tc", "et", "rc"], 4),
    "brats_ped": (["wt", "tc", "et", "cc"], 4),
    "brats_men_rt": (["gtv"], 1),
}


#: models whose default network needs patch sides that are multiples of 32 (5 downsamplings), which
#: data=sample's 48 is not, and how their refusal names them
NEEDS_32 = {"swinunetr": "SwinUNETR", "resencunet3d": r"ResEnc U-Net, 3D, 6 stages \(2\*\*\(n_stages-1\) = 32\)",
            "resencunet2d": r"ResEnc U-Net, 2D, 6 stages \(2\*\*\(n_stages-1\) = 32\)"}


def _convs(net: nn.Module) -> list[nn.Module]:
    """The network's convolutions in registration order: the input layer first, the output head last
    (transposed ones too: MedNeXt's 1x1 heads are transposed convolutions)."""
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))]


#: every data config with the plain U-Net of its sampling, and every model with a data config of each
#: channel shape (4 -> 3 sample, 3 -> 1 lgg, 4 -> 4 brats24_gli, 1 -> 1 brats_men_rt): the cross product
#: of all of them adds nothing these do not check (the channels come from data.modalities/regions alone)
PAIRS = sorted({(data, "unet2d" if data == "lgg" else "unet3d") for data in DATA}
               | {(data, model) for model in MODELS for data in ("sample", "lgg", "brats24_gli", "brats_men_rt")})


#: the quick loop builds every data config and every model once (with the sample data); the other channel
#: shapes of every model are built in the slow run (`.ci/run` runs both)
QUICK_PAIRS = {(data, model) for data, model in PAIRS if data == "sample" or model in ("unet2d", "unet3d")}


@pytest.mark.parametrize("data,model", [
    pytest.param(d, m, marks=() if (d, m) in QUICK_PAIRS else pytest.mark.slow, id=f"{m}-{d}") for d, m in PAIRS
])
def test_data_model_configs_instantiate(data, model, tmp_path):
    sampling = "2d" if "2d" in model else "3d"  # unet2d, unet2d_ds, nnunet2d, ...
    cfg = compose_config([f"data={data}", f"model={model}", f"data.sampling={sampling}", "data.root=/nonexistent"], tmp_path)
    if data == "lgg" and sampling == "3d":  # TIFF slices without a slice spacing: 2D only
        with pytest.raises(Exception, match=r"data.sampling=3d is not possible .*supports only \['2d'\]"):
            hydra.utils.instantiate(cfg.data)
        return
    datamodule = hydra.utils.instantiate(cfg.data)
    if model in NEEDS_32 and any(p % 32 for p in datamodule.patch_size):  # data=sample's 48^3
        with pytest.raises(InstantiationException, match=rf"model={model}: {NEEDS_32[model]} needs every patch size to be a multiple of 32"):
            hydra.utils.instantiate(cfg.model)  # refused when the module is built, before anything is prepared
        return
    module = hydra.utils.instantiate(cfg.model)
    assert datamodule.sampling == sampling
    expected_regions, channels = CHANNELS.get(data, (["wt", "tc", "et"], 4))
    assert datamodule.region_names == expected_regions
    # the module takes the data's channels and window from the config, as the datamodule does
    assert (module.region_names, module.modalities, module.patch_size) == (
        datamodule.region_names, datamodule.modalities, datamodule.patch_size)
    assert module.net.spatial_dims == int(sampling[0])
    # input channels follow data.modalities, outputs the regions
    convs = _convs(module.net)
    assert convs[0].in_channels == len(cfg.data.preprocessing.modalities) == channels
    assert convs[-1].out_channels == len(expected_regions)
    for callback in cfg.callbacks.values():
        hydra.utils.instantiate(callback)


def test_modalities_subset_changes_input_channels(tmp_path):
    cfg = compose_config(["data=brats20", "data.root=/x", "data.modalities=[flair,t1ce,t2]"], tmp_path)
    assert _convs(hydra.utils.instantiate(cfg.model).net)[0].in_channels == 3


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", "data.root=/x"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    net = hydra.utils.instantiate(cfg.model).net
    choose_precision_and_threads(cfg)  # as train.py does: trainer.precision=auto is ours, not Lightning's
    assert cfg.trainer.precision in ("32", "bf16-mixed")
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False)
    # the recipe's data reach the network: one input channel per modality, a 2D or 3D network by sampling
    assert list(datamodule.modalities) == list(cfg.data.preprocessing.modalities)
    first = _convs(net)[0]
    assert first.in_channels == len(cfg.data.preprocessing.modalities)
    assert first.weight.dim() - 2 == int(cfg.data.sampling[0])
    assert trainer.max_steps == cfg.trainer.get("max_steps", -1)


def test_model_dimension_must_match_sampling(tmp_path):
    cfg = compose_config(["data=brats20", "data.root=/x", "model=unet2d", "data.sampling=3d"], tmp_path)
    with pytest.raises(InstantiationException, match=r"model=unet2d: plain U-Net, 2D, .* is 2D but the patch size \[128, 128, 128\] has 3 dimensions: set data.sampling=2d"):
        hydra.utils.instantiate(cfg.model)


def test_indivisible_patch_size_is_an_error_naming_it(tmp_path):
    cfg = compose_config(["data=brats20", "data.root=/x", "data.patch_size=[100,96,96]", "model.net.depth=5"], tmp_path)
    with pytest.raises(InstantiationException, match=r"model=unet3d: .*multiple of 16; patch size \[100, 96, 96\] is not.*nearest valid patch size: \[96, 96, 96\]"):
        hydra.utils.instantiate(cfg.model)
