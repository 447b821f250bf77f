"""SegmentationModule without a datamodule, and its checkpoints restored by Lightning's ``load_from_checkpoint``."""

from __future__ import annotations

from functools import partial

import hydra
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from lightning_brats.inference.prediction import load_trained_model
from lightning_brats.models import UNet
from lightning_brats.training.checkpoints import CONFIG_KEY, CheckpointError
from lightning_brats.training.losses import DiceBCELoss
from lightning_brats.training.module import SegmentationModule
from tests.conftest import BRATS20_REGIONS, BRATS_MODALITIES, compose_config, inference_settings

#: a small 3D U-Net on data=sample: 4 modalities in, 3 regions out, 32^3 patches
SMALL = ["data=sample", "data.patch_size=[32,32,32]", "model.net.base_filters=4", "model.net.depth=3"]


def _run_config(cfg) -> dict:
    """What train.py passes: the resolved data and model config."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("data", "model")}


def _eval_logits(module: SegmentationModule, x: torch.Tensor) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(x)


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def test_module_is_configured_once_from_the_config(tmp_path):
    cfg = compose_config([*SMALL, "data.root=unused", "data.sampling=2d", "model=unet2d", "data.batch_size=4"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    # the data settings reached the module through interpolation: 2D sampling keeps the slice's two sizes
    assert (module.region_names, module.modalities, module.patch_size) == (["wt", "tc", "et"], BRATS_MODALITIES, [32, 32])
    assert module.display_channel == BRATS_MODALITIES.index("t1ce")  # display.modality's first choice
    assert module.describe_network()["model/input_shape"] == [4, 4, 32, 32]  # data.batch_size, no datamodule
    assert module.run_config is None and "configure_for" not in dir(module)
    # every hyper-parameter is a plain value, the parts kept as configs (checkpoints load with weights_only=True)
    hparams = dict(module.hparams)
    path = tmp_path / "hparams.pt"
    torch.save(hparams, path)
    assert torch.load(path, weights_only=True) == hparams
    assert hparams["net"]["_target_"] == "lightning_brats.models.UNet" and hparams["net"]["in_channels"] == 4
    assert hparams["regions"] == {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}


def _random_batches(n: int, size: int, seed: int) -> list[dict]:
    """Batches of one case: random images and blob-shaped targets (each region non-empty)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        image = torch.randn(1, 4, size, size, size, generator=g)
        target = torch.zeros(1, 3, size, size, size)
        target[:, 0, 4:-4, 4:-4, 4:-4] = 1  # wt
        target[:, 1, 6:-6, 6:-6, 6:-6] = 1  # tc inside wt
        target[:, 2, 8:-8, 8:-8, 8:-8] = 1  # et inside tc
        batches.append({"image": image[0], "target": target[0], "case_id": f"case{len(batches)}"})
    return batches


@pytest.mark.slow
def test_module_trains_and_validates_with_plain_dataloaders_and_no_datamodule(tmp_path):
    """No datamodule: plain DataLoaders; the validation Dice is checked against one computed here."""
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=4, out_channels=3, depth=3, base_filters=4)
    module = SegmentationModule(
        net=net, loss=DiceBCELoss(), optimizer=partial(torch.optim.SGD, lr=0.01), inference=inference_settings(),
        regions=["wt", "tc", "et"], modalities=BRATS_MODALITIES, patch_size=[16, 16, 16], batch_size=2,
    )
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    train = DataLoader(_random_batches(4, 16, seed=1), batch_size=2)
    val_batches = _random_batches(2, 16, seed=2)  # window = case size: one window, the network's own output
    trainer = _trainer(max_steps=2, limit_val_batches=2, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=train, val_dataloaders=DataLoader(val_batches, batch_size=1))
    assert trainer.datamodule is None and trainer.global_step == 2
    assert any(not torch.equal(before[k], v) for k, v in module.net.state_dict().items())  # it trained
    # Dice per region over the 2 cases, worked out here: 2|P & T| / (|P| + |T|), thresholded at 0.5
    dice = torch.zeros(3)
    for batch in val_batches:
        pred = torch.sigmoid(_eval_logits(module, batch["image"][None]))[0] > 0.5
        truth = batch["target"].bool()
        for r in range(3):
            both = (pred[r].sum() + truth[r].sum()).item()
            dice[r] += 2 * (pred[r] & truth[r]).sum().item() / both if both else 1.0
    dice /= 2
    metrics = trainer.callback_metrics
    for r, name in enumerate(["wt", "tc", "et"]):
        assert metrics[f"val/dice_{name}"].item() == pytest.approx(dice[r].item(), abs=1e-4)
    assert metrics["val/dice_mean"].item() == pytest.approx(dice.mean().item(), abs=1e-4)


@pytest.mark.slow
def test_load_from_checkpoint_of_a_fast_dev_run_gives_the_trained_outputs(phantom_root, tmp_path):
    cfg = compose_config([*SMALL, f"data.root={phantom_root}", "data.num_folds=4", "data.samples_per_epoch=4"],
                         tmp_path, tmp_path / "cache")
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model, run_config=_run_config(cfg))  # as train.py builds it
    trainer = _trainer(fast_dev_run=1)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.fit(module, datamodule=datamodule)
    assert any(not torch.equal(initial[k], v) for k, v in module.state_dict().items())
    path = tmp_path / "fast_dev_run.ckpt"
    trainer.save_checkpoint(path)

    restored = SegmentationModule.load_from_checkpoint(path)
    x = torch.randn(2, 4, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_eval_logits(restored, x), _eval_logits(module, x), rtol=0, atol=0)
    assert (restored.region_names, restored.modalities, restored.patch_size) == (["wt", "tc", "et"], BRATS_MODALITIES, [32] * 3)
    assert restored.run_config["data"]["root"] == str(phantom_root)  # the checkpoint's training config
    assert restored.inference == module.inference and type(restored.loss) is DiceBCELoss
    # prediction goes through the same restore: the same network
    torch.testing.assert_close(load_trained_model(path, device="cpu").net(x), _eval_logits(module, x), rtol=0, atol=0)


def _old_layout(module: SegmentationModule, cfg, path):
    """A checkpoint as lightning-brats wrote it before the module took its data settings and part
    configs as arguments: plain settings in hyper_parameters, the rest only in the training config."""
    old = ("inference", "num_val_images", "display_modality", "name", "compile", "skip_nonfinite")
    model = {k: v for k, v in _run_config(cfg)["model"].items()
             if k not in ("_recursive_", "regions", "modalities", "patch_size", "sampling", "batch_size")}
    torch.save({"state_dict": module.state_dict(), "epoch": 0, "global_step": 1, "pytorch-lightning_version": pl.__version__,
                "hyper_parameters": {k: module.hparams[k] for k in old},
                CONFIG_KEY: {"data": _run_config(cfg)["data"], "model": model}}, path)


def test_checkpoint_of_the_previous_layout_still_loads(tmp_path):
    cfg = compose_config([*SMALL, "data.root=unused"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(0.01)  # weights that a fresh network would not have
    path = tmp_path / "old.ckpt"
    _old_layout(module, cfg, path)
    restored = SegmentationModule.load_from_checkpoint(path)
    x = torch.randn(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(_eval_logits(restored, x), _eval_logits(module, x), rtol=0, atol=0)
    assert restored.region_names == ["wt", "tc", "et"] and restored.patch_size == [32, 32, 32]
    assert restored.run_config["data"]["release"]["regions"] == BRATS20_REGIONS


def test_checkpoint_without_part_configs_is_refused_naming_file_and_parts(tmp_path):
    """A module built from Python objects keeps no configs for them: loading says so, and loads
    once they are passed."""
    def build():
        torch.manual_seed(0)
        return UNet(spatial_dims=3, in_channels=4, out_channels=3, depth=3, base_filters=4)

    module = SegmentationModule(
        net=build(), loss=DiceBCELoss(), optimizer=partial(torch.optim.SGD, lr=0.01), inference=inference_settings(),
        regions=["wt", "tc", "et"], modalities=BRATS_MODALITIES, patch_size=[16, 16, 16],
    )
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: cannot rebuild the module, .* no \['net', 'loss', 'optimizer'\]"):
        SegmentationModule.load_from_checkpoint(path)
    net = UNet(spatial_dims=3, in_channels=4, out_channels=3, depth=3, base_filters=4)
    restored = SegmentationModule.load_from_checkpoint(path, net=net, loss=DiceBCELoss(), optimizer=partial(torch.optim.SGD))
    assert all(torch.equal(a, b) for a, b in zip(restored.net.state_dict().values(), module.net.state_dict().values()))
    with pytest.raises(CheckpointError, match="refusing weights_only=False"):
        SegmentationModule.load_from_checkpoint(path, weights_only=False)
    torch.save({"state_dict": module.state_dict()}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: no 'pytorch-lightning_version', not a checkpoint written by Lightning"):
        SegmentationModule.load_from_checkpoint(path)
