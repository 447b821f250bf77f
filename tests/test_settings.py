"""One preprocessing settings object: built from a data config, read by the cache and by prediction."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from lightning_brats.cli.train import CONFIG_DIR
from lightning_brats.data.settings import PreprocessingSettings
from lightning_brats.inference.prediction import load_trained_model
from lightning_brats.training.module import CONFIG_KEY
from tests.conftest import BRATS_MODALITIES, compose_config

DATA = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))
DATAMODULE = "lightning_brats.data.datamodule.SegmentationDataModule"

#: cache folder fingerprints written by the code before the settings object existed (main at ca837ca,
#: data.root=/x): the same settings must keep finding the caches users already have
RECORDED_FINGERPRINTS = {
    ("data=brats20",): "4ef7ff55df66",
    ("data=brats20", "data.normalization=minmax"): "8f262c9e5640",
    ("data=brats20", "data.crop=center", "data.crop_size=[128,128,128]"): "c47c19df434c",
    ("experiment=brats_cpu",): "6c6d09bf7539",
    ("data=lgg",): "47694a5e5245",
    ("data=msd_task01",): "01f85559e717",
    ("data=brats23",): "4094c45ed64b",
}


@pytest.mark.parametrize("overrides", list(RECORDED_FINGERPRINTS))
def test_cache_fingerprints_are_those_of_existing_caches(overrides, tmp_path):
    cfg = compose_config([*overrides, "data.root=/x"], tmp_path)
    assert hydra.utils.instantiate(cfg.data).cache.fingerprint == RECORDED_FINGERPRINTS[overrides]


@pytest.mark.parametrize("data", DATA)
def test_a_stored_data_config_gives_the_settings_the_datamodule_used(data, tmp_path):
    cfg = compose_config([f"data={data}", "data.root=/x"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    stored = OmegaConf.to_container(cfg.data, resolve=True)  # what train.py writes under CONFIG_KEY
    assert PreprocessingSettings.from_data(stored, source="checkpoint x.ckpt") == datamodule.preprocessing
    assert datamodule.cache.preprocessing is datamodule.preprocessing


def test_settings_are_frozen_and_normalised():
    settings = PreprocessingSettings(BRATS_MODALITIES, spacing=[2, 2, 2], crop="center", crop_size=[128.0, 128, 96])
    assert settings.spacing == (2.0, 2.0, 2.0) and settings.crop_size == (128, 128, 96)
    assert settings.as_record() == {
        "modalities": BRATS_MODALITIES, "spacing": [2.0, 2.0, 2.0], "normalization": "zscore", "crop": "center",
        "crop_size": [128, 128, 96],
    }
    with pytest.raises(AttributeError):
        settings.normalization = "minmax"


def test_a_data_config_without_newer_keys_gets_the_old_behaviour():
    # a checkpoint trained before data.normalization/crop existed (flat, as every config then): z-score inside
    # the brain box, own spacing
    settings = PreprocessingSettings.from_data({"_target_": DATAMODULE, "modalities": BRATS_MODALITIES}, source="old.ckpt")
    assert (settings.spacing, settings.normalization, settings.crop, settings.crop_size) == (None, "zscore", "nonzero", None)
    assert PreprocessingSettings.from_config({"modalities": BRATS_MODALITIES}) == settings


def test_bad_settings_are_errors_naming_the_setting():
    with pytest.raises(ValueError, match="data.normalization='percentile': expected one of"):
        PreprocessingSettings(BRATS_MODALITIES, normalization="percentile")
    with pytest.raises(ValueError, match="data.crop=center needs data.crop_size"):
        PreprocessingSettings(BRATS_MODALITIES, crop="center")
    with pytest.raises(ValueError, match="data.crop='random': expected 'nonzero' or 'center'"):
        PreprocessingSettings(BRATS_MODALITIES, crop="random")
    with pytest.raises(ValueError, match=r"data.spacing=\[2, 2\]: expected 3 positive"):
        PreprocessingSettings(BRATS_MODALITIES, spacing=[2, 2])
    with pytest.raises(ValueError, match="data.modalities"):
        PreprocessingSettings(())


def test_unknown_settings_are_refused_when_they_come_from_a_checkpoint():
    plan = {"modalities": BRATS_MODALITIES, "normalization": "zscore", "intensity_clip": [0.5, 99.5]}
    with pytest.raises(ValueError, match=r"^run.ckpt: cannot reproduce its preprocessing: data.preprocessing.intensity_clip: not a"):
        PreprocessingSettings.from_config(plan, source="run.ckpt")
    with pytest.raises(ValueError, match=r"^data.preprocessing.intensity_clip: not a preprocessing setting"):
        PreprocessingSettings.from_config(plan)  # any plan: a key it does not know might change the arrays
    # the datamodule's own arguments are not preprocessing: a data config's other keys are not read
    data = {"_target_": DATAMODULE, "preprocessing": {"modalities": BRATS_MODALITIES}, "context_slices": 2}
    assert PreprocessingSettings.from_data(data, source="run.ckpt").modalities == tuple(BRATS_MODALITIES)


@pytest.mark.parametrize(
    ("change", "named"),
    [({"normalization": "percentile"}, "data.normalization='percentile'"),
     ({"resample_order": 3}, "data.preprocessing.resample_order")],
)
def test_prediction_refuses_a_checkpoint_whose_preprocessing_it_cannot_reproduce(change, named, tmp_path):
    cfg = compose_config(["data=brats20", "data.root=/x"], tmp_path)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data["preprocessing"].update(change)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    path = tmp_path / "epoch_000.ckpt"
    torch.save({CONFIG_KEY: {"data": data, "model": model}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match=rf"checkpoint {path}: cannot reproduce its preprocessing: {named}"):
        load_trained_model(path)


def _compose_predict(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("predict", overrides=["ckpt_path=x.ckpt", *overrides])


@pytest.mark.parametrize("model", ["unet3d", "unet2d"])
def test_validation_reads_the_inference_settings_predict_reads(model, tmp_path):
    from lightning_brats.inference.sliding_window import InferenceSettings

    sampling = "data.sampling=2d" if model.endswith("2d") else "data.sampling=3d"  # a window the network takes
    cfg = compose_config([f"model={model}", sampling, "inference.overlap=0.25", "inference.threshold=0.4"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    predicted = InferenceSettings.from_config(_compose_predict(["inference.overlap=0.25", "inference.threshold=0.4"]).inference)
    assert module.inference == predicted
    assert (module.inference.overlap, module.inference.threshold, module.inference.sw_batch_size) == (0.25, 0.4, 4)
    assert module.hparams.inference["overlap"] == 0.25 and isinstance(module.hparams.inference, dict)


def test_inference_settings_check_their_keys_and_values():
    from lightning_brats.inference.sliding_window import InferenceSettings

    plain = OmegaConf.to_container(_compose_predict([]).inference, resolve=True)
    with pytest.raises(ValueError, match=r"unknown keys \['sliding_window_overlap'\]"):
        InferenceSettings.from_config({**plain, "sliding_window_overlap": 0.5})
    with pytest.raises(ValueError, match=r"lacks \['threshold'\]"):
        InferenceSettings.from_config({k: v for k, v in plain.items() if k != "threshold"})
    for key, value in (("overlap", 1.0), ("sw_batch_size", 0), ("threshold", 1.0)):
        with pytest.raises(ValueError, match=rf"inference.{key}={value}"):
            InferenceSettings.from_config({**plain, key: value})
