"""The published BraTS recipes (``experiment=brats_nnunet``, ``experiment=brats_nvidia``) hold the
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


@pytest.mark.parametrize("name,numbers", [("brats_nnunet", ["88.95", "85.06", "82.03", "arXiv:2011.00848"]),
                                          ("brats_nvidia", ["0.8855", "0.267", "arXiv:2110.03352"])])
def test_recipes_cite_their_paper_and_numbers(name, numbers):
    config = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text()
    readme = (REPO / "README.md").read_text()
    for text in numbers:
        assert text in config and text in readme, text
    assert f"experiment={name}" in readme
