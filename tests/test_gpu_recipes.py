"""The published BraTS recipes (``experiment=brats_nnunet``, ``brats_nvidia``, ``brats_resenc_m``, ``brats_resenc_l``,
``brats_mednext``) hold the
settings of their papers; the values expected here are copied from the papers' code, not from the
configs (a fast_dev_run of each on the real cases is in tests/test_recipes.py, marked slow)."""

from __future__ import annotations

import hydra
import pytest
import torch
from torch import nn

from lightning_brats.training.schedules import PolyLRByProgress
from tests.conftest import REPO, compose_config


def _compose(name, tmp_path, extra=()):
    return compose_config([f"experiment={name}", "data.root=/x", *extra], tmp_path)


def test_nnunet_recipe_is_isensee_2020(tmp_path):
    cfg = _compose("brats_nnunet", tmp_path)
    assert (cfg.hydra.runtime.choices.data, cfg.hydra.runtime.choices.model) == ("brats20", "unet3d_ds")
    assert cfg.trainer.precision == "auto" and cfg.trainer.accelerator == "cpu"  # cpu: the test fixture's
    assert list(cfg.data.release.regions) == ["wt", "tc", "et"] and cfg.data.preprocessing.spacing is None
    assert list(cfg.data.patch_size) == [128, 128, 128] and cfg.data.batch_size == 2
    # 1000 epochs x 250 iterations
    assert cfg.trainer.max_epochs == 1000 and cfg.data.samples_per_epoch // cfg.data.batch_size == 250
    assert cfg.trainer.gradient_clip_val == 12
    assert cfg.data.foreground_sampling == "label"  # nnU-Net v1's DataLoader3D: a label present first
    module = hydra.utils.instantiate(cfg.model)
    net = module.net
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    # 32 filters doubling to 320 over 6 stages (5 downsamplings: 128 -> 4)
    assert [c.out_channels for c in net.encoder.modules() if isinstance(c, nn.Conv3d)][::2] == [32, 64, 128, 256, 320, 320]
    assert convs[0].in_channels == 4 and net.divisor == 32
    assert any(isinstance(m, nn.InstanceNorm3d) for m in net.modules())
    # deep supervision on the 4 highest decoder outputs: 128, 64, 32, 16
    assert net.num_outputs == 4 and module.loss.batch_dice is True
    optimizer = module.optimizer_factory(params=module.parameters())
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.99, True, 3e-5)
    scheduler = module.scheduler_factory(optimizer=optimizer)
    assert isinstance(scheduler, PolyLRByProgress) and scheduler.power == 0.9
    augment = cfg.data.augment
    assert (augment.flip, augment.spatial_prob, augment.rotate_deg, augment.scale) == (True, 0.3, 30, 0.35)
    # DA3's elastic deformation: p 0.3, width U(0, 0.25) of the patch, on both augmentation paths
    from lightning_brats.data.batch_augment import BatchAugmentation

    cpu_path = hydra.utils.instantiate(cfg.data).augment
    for aug in (cpu_path, BatchAugmentation(**cpu_path.batch_settings())):
        assert (aug.elastic_prob, aug.elastic_scale) == (0.3, (0.0, 0.25))


@pytest.mark.parametrize(
    "override,check",
    [
        ("model.net.norm=batch", lambda net, loss: any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
         and not any(isinstance(m, nn.InstanceNorm3d) for m in net.modules())),
        ("model.loss.batch_dice=false", lambda net, loss: loss.batch_dice is False),
    ],
)
def test_nnunet_variants_are_overrides(override, check, tmp_path):
    module = hydra.utils.instantiate(_compose("brats_nnunet", tmp_path, [override]).model)
    assert check(module.net, module.loss)


def test_nvidia_recipe_is_futrega_2021(tmp_path):
    cfg = _compose("brats_nvidia", tmp_path)
    assert (cfg.hydra.runtime.choices.data, cfg.hydra.runtime.choices.model) == ("brats21", "dynunet")
    assert cfg.trainer.precision == "auto"
    assert list(cfg.data.patch_size) == [128, 128, 128] and cfg.data.batch_size == 2 and cfg.data.preprocessing.spacing is None
    assert cfg.data.oversample_foreground == 0.4
    assert cfg.data.foreground_sampling == "voxel"  # their loader crops around any foreground
    module = hydra.utils.instantiate(cfg.model)
    net = module.net
    assert list(net.filters) == [64, 96, 128, 192, 256, 384, 512] and net.divisor == 64
    assert net.num_outputs == 3 and module.loss.batch_dice is True
    net.check_patch_size([128, 128, 128])  # bottleneck 2^3 (--min_fmap 2)
    with pytest.raises(ValueError, match="at least 128"):
        net.check_patch_size([64, 64, 64])
    optimizer = module.optimizer_factory(params=module.parameters())
    assert type(optimizer) is torch.optim.Adam
    assert (optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]) == (3e-4, 1e-4)
    assert isinstance(module.scheduler_factory(optimizer=optimizer), PolyLRByProgress)


def _nnunet_v2_training(cfg, module, samples_per_epoch):
    """nnU-Net v2's default trainer (nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py) on BraTS 2021 at 1 mm."""
    assert cfg.hydra.runtime.choices.data == "brats21" and cfg.data.preprocessing.spacing is None and cfg.trainer.precision == "auto"
    assert cfg.trainer.max_epochs == 1000 and cfg.data.samples_per_epoch == samples_per_epoch  # 250 iterations
    assert cfg.data.samples_per_epoch // cfg.data.batch_size == 250
    assert cfg.trainer.gradient_clip_val == 12 and cfg.data.oversample_foreground == 0.33
    assert cfg.data.foreground_sampling == "region"  # nnUNetDataLoaderBase.get_bbox: a region present first
    augment = cfg.data.augment
    assert (augment.flip, augment.spatial_prob, augment.rotate_deg, augment.elastic_prob) == (True, 0.2, 30, 0.0)
    assert (augment.gamma_prob, augment.low_res_prob) == (0.3, 0.25)  # augment=nnunet's intensity set
    assert module.loss.batch_dice is True
    assert isinstance(module.scheduler_factory(optimizer=module.optimizer_factory(params=module.parameters())), PolyLRByProgress)


@pytest.mark.parametrize("name,patch,batch", [("brats_resenc_m", [128, 128, 128], 2), ("brats_resenc_l", [160, 192, 160], 3)])
def test_resenc_recipes_are_the_presets_on_brats(name, patch, batch, tmp_path):
    """ResEnc M and L: the same planner topology (6 stages, 32..320, blocks 1-3-4-6-6-6, one decoder conv), the
    patch and batch of the planner's memory target (8 and 24 GB) for a BraTS brain, SGD as nnU-Net."""
    cfg = _compose(name, tmp_path)
    assert cfg.hydra.runtime.choices.model == "resencunet3d"
    assert list(cfg.data.patch_size) == patch and cfg.data.batch_size == batch
    module = hydra.utils.instantiate(cfg.model)
    net = module.net
    assert net.filters == [32, 64, 128, 256, 320, 320] and [len(s) for s in net.stages] == [1, 3, 4, 6, 6, 6]
    assert [len(s) for s in net.decoder] == [1] * 5 and net.num_outputs == 4 and net.divisor == 32
    assert sum(p.numel() for p in net.parameters()) == 102_352_204  # tests/test_resenc_mednext.py: nnU-Net's less one head
    net.check_patch_size(patch)
    optimizer = module.optimizer_factory(params=module.parameters())
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.01, 0.99, True, 3e-5)
    _nnunet_v2_training(cfg, module, 250 * batch)


@pytest.mark.slow  # MedNeXt L built: over a second of the quick loop
def test_mednext_recipe_is_roy_2023_large_k3(tmp_path):
    """MedNeXt L k3 (61.8 M parameters in the paper) with the authors' trainer: AdamW 1e-3, eps 1e-4, weight decay
    3e-5, in nnU-Net's pipeline at 128^3, batch 2; kernel 5 is one override."""
    cfg = _compose("brats_mednext", tmp_path)
    assert cfg.hydra.runtime.choices.model == "mednext"
    assert list(cfg.data.patch_size) == [128, 128, 128] and cfg.data.batch_size == 2
    module = hydra.utils.instantiate(cfg.model)
    net = module.net
    assert [len(s) for s in net.enc_stages] == [3, 4, 8, 8] and len(net.bottleneck) == 8
    assert [len(s) for s in net.dec_stages] == [8, 8, 4, 3] and net.num_outputs == 4
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 61.7
    assert net.enc_stages[0][0].conv1.kernel_size == (3, 3, 3)
    optimizer = module.optimizer_factory(params=module.parameters())
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.AdamW
    assert (group["lr"], group["eps"], group["weight_decay"]) == (1e-3, 1e-4, 3e-5)
    _nnunet_v2_training(cfg, module, 500)
    k5 = hydra.utils.instantiate(_compose("brats_mednext", tmp_path, ["model.net.kernel_size=5"]).model.net)
    assert k5.enc_stages[0][0].conv1.kernel_size == (5, 5, 5)


@pytest.mark.parametrize("name,numbers", [("brats_nnunet", ["88.95", "85.06", "82.03", "arXiv:2011.00848"]),
                                          ("brats_nvidia", ["0.8855", "0.267", "arXiv:2110.03352"]),
                                          ("brats_resenc_m", ["91.26", "91.24", "arXiv:2404.09556", "resenc_presets.md"]),
                                          ("brats_resenc_l", ["91.13", "arXiv:2404.09556", "resenc_presets.md"]),
                                          ("brats_mednext", ["91.35", "91.50", "arXiv:2303.09975", "arXiv:2404.09556"])])
def test_recipes_cite_their_paper_and_numbers(name, numbers):
    config = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text()
    readme = (REPO / "README.md").read_text()
    for text in numbers:
        assert text in config and text in readme, text
    assert f"experiment={name}" in readme
