"""Every ``model=`` variant: builds from its config, runs forward and backward in each dimension
it supports, refuses patch sizes it cannot take, and trains one step on the real cases."""

from __future__ import annotations

import logging
import math

import hydra
import pytest
import torch
from hydra.errors import InstantiationException

from lightning_brats.cli.train import train
from lightning_brats.training.losses import DiceBCELoss, deep_supervision_loss, deep_supervision_weights
from tests.conftest import MODEL_VARIANTS as VARIANTS
from tests.conftest import compose_config

NAMES = [v[0] for v in VARIANTS]


def _module(name: str, overrides: list[str], tmp_path, extra: list[str] = ()):
    """The module of ``model=<name>`` on data=sample, with a window it takes: axial slices for a 2D
    network, 64^3 for SwinUNETR (``overrides`` may change either)."""
    suits = ["data.sampling=2d"] if "2d" in name else ["data.patch_size=[64,64,64]"] if name == "swinunetr" else []
    cfg = compose_config([f"model={name}", "data=sample", "data.root=unused", *suits, *overrides, *extra], tmp_path)
    return hydra.utils.instantiate(cfg.model)


#: 3D variants and the CPU-size 2024 networks, whose forward and backward pass takes several CPU-seconds: run with the slow tests
#: (tests/test_models.py keeps a small 3D U-Net's in the fast ones)
HEAVY = {"unet3d", "resunet3d", "attention_unet3d", "unet3d_ds", "segresnet", "swinunetr", "resencunet3d_cpu", "mednext_cpu",
         "resencunet2d_cpu", "mednext2d_cpu"}


@pytest.mark.parametrize(
    "name,dims,overrides", [pytest.param(*v, marks=pytest.mark.slow) if v[0] in HEAVY else v for v in VARIANTS], ids=NAMES
)
def test_variant_forward_backward_and_shapes(name, dims, overrides, tmp_path):
    module = _module(name, overrides, tmp_path)
    net = module.net
    assert module.hparams.name == name and net.spatial_dims == dims
    size = (64 if name == "swinunetr" else 32,) * dims
    x = torch.randn(2, 4, *size)
    out = net(x)
    outputs = out if isinstance(out, list) else [out]
    assert outputs[0].shape == (2, 3, *size)  # 4 modalities in, 3 regions out, from the data config
    target = (torch.rand(2, 3, *size) > 0.8).float()
    module.train_loss(out, target).backward()
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *size)  # eval: the full-resolution output only


@pytest.mark.parametrize("name", ["unet2d_ds", "unet3d_ds"])
def test_deep_supervision_outputs_and_weighted_loss(name, tmp_path):
    dims = int(name[4])  # unet2d_ds, unet3d_ds
    module = _module(name, ["model.net.depth=4", "model.net.base_filters=8"], tmp_path)
    size = (32,) * dims
    out = module.net(torch.randn(2, 4, *size))
    assert [o.shape[2:] for o in out] == [torch.Size((32,) * dims), torch.Size((16,) * dims)]
    assert deep_supervision_weights(2) == pytest.approx([2 / 3, 1 / 3])
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    target = (torch.rand(2, 3, *size) > 0.7).float()
    base = DiceBCELoss()
    pool = (torch.nn.functional.max_pool2d, torch.nn.functional.max_pool3d)[dims - 2]
    # nearest downsampling of a 2x-blocky target equals max-pooling it: an independent check
    blocky = torch.nn.functional.interpolate(pool(target, 2), scale_factor=2, mode="nearest")
    expected = 2 / 3 * base(out[0], blocky) + 1 / 3 * base(out[1], pool(blocky, 2))
    assert module.train_loss(out, blocky).item() == pytest.approx(expected.item(), rel=1e-5)
    assert deep_supervision_loss(base, 2)(out, blocky).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dynunet_deep_supervision_heads_at_their_scales_and_weighted_loss(tmp_path):
    """DynUNet (NVIDIA's BraTS 2021 network) returns its 2 lower heads where they are computed (1/2 and
    1/4 of the patch), not upsampled; the loss weighs full, half and quarter scale 4/7, 2/7, 1/7."""
    module = _module("dynunet", ["model.net.filters=[8,16,32,64]"], tmp_path)
    assert module.net.num_outputs == 3
    out = module.net(torch.randn(2, 4, 32, 32, 32))
    assert [tuple(o.shape) for o in out] == [(2, 3, 32, 32, 32), (2, 3, 16, 16, 16), (2, 3, 8, 8, 8)]
    target = (torch.rand(2, 3, 8, 8, 8) > 0.7).float()
    # a target blocky at 4 voxels: nearest downsampling to 16^3 and 8^3 equals max-pooling it
    blocky = target.repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    pool = torch.nn.functional.max_pool3d
    base = DiceBCELoss()
    expected = 4 / 7 * base(out[0], blocky) + 2 / 7 * base(out[1], pool(blocky, 2)) + 1 / 7 * base(out[2], target)
    assert module.train_loss(out, blocky).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(Exception, match=r"deep_supr_num=3 must be in \[1, 2\] for 4 stages"):
        _module("dynunet", ["model.net.filters=[8,16,32,64]", "model.net.deep_supr_num=3"], tmp_path)


@pytest.mark.parametrize(
    "name,patch,message",
    [
        ("swinunetr", [48, 48, 48], r"model=swinunetr: SwinUNETR needs every patch size to be a multiple of 32 of at least 64.*\[48, 48, 48\].*nearest valid patch size: \[64, 64, 64\]"),
        ("swinunetr", [32, 64, 64], r"model=swinunetr: .*offending sizes \[32\]\); nearest valid patch size: \[64, 64, 64\]"),
        ("unet3d", [48, 40, 36], r"model=unet3d: plain U-Net, 3D, depth 4 \(2\*\*\(depth-1\) = 8\).*offending sizes \[36\].*nearest valid patch size: \[48, 40, 40\]"),
        ("segresnet", [48, 48, 44], r"model=segresnet: SegResNet .*multiple of 8.*nearest valid patch size: \[48, 48, 48\]"),
        ("attention_unet2d", [64, 64, 64], r"model=attention_unet2d: .*is 2D but the patch size \[64, 64, 64\] has 3 dimensions"),
        ("dynunet", [48, 48, 40], r"model=dynunet: DynUNet \(4 downsamplings\) needs every patch size to be a multiple of 16 of at least 32.*offending sizes \[40\].*nearest valid patch size: \[48, 48, 48\]"),
        ("dynunet", [16, 32, 32], r"model=dynunet: DynUNet .*offending sizes \[16\]\); nearest valid patch size: \[32, 32, 32\]"),
        ("resencunet3d", [48, 48, 48], r"model=resencunet3d: ResEnc U-Net, 3D, 6 stages \(2\*\*\(n_stages-1\) = 32\) needs every patch size to be a multiple of 32 of at least 64.*nearest valid patch size: \[64, 64, 64\]"),
        ("resencunet2d_cpu", [40, 48], r"model=resencunet2d_cpu: ResEnc U-Net, 2D, 5 stages .*multiple of 16 of at least 32.*offending sizes \[40\]\); nearest valid patch size: \[48, 48\]"),
        ("mednext", [40, 48, 48], r"model=mednext: MedNeXt S k3, 3D, 4 downsamplings needs every patch size to be a multiple of 16 of at least 32.*offending sizes \[40\]\); nearest valid patch size: \[48, 48, 48\]"),
        ("mednext_cpu", [8, 48, 48], r"model=mednext_cpu: MedNeXt S k3, 3D, 3 downsamplings .*multiple of 8 of at least 16.*offending sizes \[8\]\); nearest valid patch size: \[16, 48, 48\]"),
        ("mednext2d", [64, 64, 64], r"model=mednext2d: .*is 2D but the patch size \[64, 64, 64\] has 3 dimensions"),
    ],
)
def test_unsuitable_patch_is_refused_naming_model_size_and_nearest(name, patch, message, tmp_path):
    overrides = [f"data.patch_size=[{','.join(map(str, patch))}]", f"data.sampling={len(patch)}d"]
    with pytest.raises(InstantiationException, match=message):  # when the module is built, before any data is read
        _module(name, overrides, tmp_path)


@pytest.mark.parametrize("old,new", [("nnunet2d", "unet2d_ds"), ("nnunet3d", "unet3d_ds")])
def test_former_nnunet_names_compose_to_the_renamed_models(old, new, tmp_path):
    """Recorded commands with model=nnunet3d/nnunet2d still compose, to exactly the renamed model."""
    from omegaconf import OmegaConf

    configs = [OmegaConf.to_container(compose_config([f"model={name}", "data=sample", "data.root=unused"], tmp_path).model)
               for name in (old, new)]
    assert configs[0] == configs[1]
    assert configs[0]["name"] == new and configs[0]["net"]["deep_supervision"] is True
    assert configs[0]["net"]["spatial_dims"] == int(new[4])


def test_norm_activation_and_dropout_are_config_values(tmp_path):
    module = _module(
        "resunet3d", ["model.net.norm=group", "model.net.activation=gelu", "model.net.dropout=0.1"], tmp_path
    )
    kinds = {type(m).__name__ for m in module.net.modules()}
    assert {"GroupNorm", "GELU", "Dropout3d"} <= kinds or {"GroupNorm", "GELU", "Dropout"} <= kinds
    assert "InstanceNorm3d" not in kinds and "LeakyReLU" not in kinds
    with pytest.raises(Exception, match=r"norm='layer' is not one of \['batch', 'group', 'instance'\]"):
        _module("unet3d", ["model.net.norm=layer"], tmp_path)
    with pytest.raises(Exception, match=r"deep_supervision needs depth >= 4 .*got depth 3"):
        _module("unet3d_ds", ["model.net.depth=3"], tmp_path)


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("name", NAMES)
def test_variant_trains_one_step_on_real_cases(name, brats2018_root, cache_dir, tmp_path, caplog):
    """One fast_dev_run step of train.py per variant on the shared real cases, in the precision the preset
    leaves to the machine (brats_cpu_3d names none: bf16 where the CPU runs it natively, else fp32)."""
    overrides = ["experiment=brats_cpu_3d", f"data.root={brats2018_root}", "debug=fast_dev_run", f"model={name}"]
    if "2d" in name:  # unet2d, unet2d_ds, ...
        overrides += ["data.sampling=2d", "data.patch_size=[64,64]", "data.batch_size=4"]
    if name == "swinunetr":
        overrides += ["data.patch_size=[64,64,64]", "data.batch_size=2", "model.net.feature_size=12"]
    if name == "resencunet3d":  # the full-size networks (5 downsamplings: sides of 64 at least), narrowed
        overrides += ["data.patch_size=[64,64,64]", "data.batch_size=2", "model.net.base_filters=4"]
    if name == "resencunet2d":
        overrides += ["model.net.base_filters=8"]
    if name in ("mednext", "mednext2d"):
        overrides += ["model.net.init_filters=8"]
    cfg = compose_config(overrides, tmp_path, cache_dir)
    assert cfg.trainer.precision == "auto"
    with caplog.at_level(logging.INFO, logger="lightning_brats.training.module"):
        metrics = train(cfg)
    regions = [metrics[f"val/dice_{r}"] for r in ("wt", "tc", "et")]
    assert all(0.0 <= d <= 1.0 for d in regions) and math.isfinite(metrics["train/loss"])
    assert metrics["val/dice_mean"] == pytest.approx(sum(regions) / 3, abs=1e-6)  # the mean of its regions
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"model={name}:")]
    patch = list(cfg.data.patch_size)
    assert f"input [{cfg.data.batch_size}, 4, {', '.join(map(str, patch))}] -> output [{cfg.data.batch_size}, 3, " in line
    assert "parameters" in line


@pytest.mark.slow
def test_compile_matches_eager_and_checkpoints_plain_weights(tmp_path):
    module = _module("unet2d", ["model.net.depth=3", "model.net.base_filters=8"], tmp_path, ["model.compile=true"])
    assert module.compiled_net is not module.net  # the compiled wrapper runs training and validation
    x = torch.randn(2, 4, 32, 32)
    torch.testing.assert_close(module(x), module.net(x), atol=1e-4, rtol=1e-4)
    assert not [k for k in module.state_dict() if "_orig_mod" in k]


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.modalities=[flair,t1ce,t2]", r"input channels: trained on data.preprocessing.modalities=\['flair', 't1', 't1ce', 't2'\] \(4 channels\), this run has \['flair', 't1ce', 't2'\] \(3\)"),
        ("~data.regions.et", r"output channels: trained for the regions \['wt', 'tc', 'et'\] of data.release.regions \(3 outputs\), this run has \['wt', 'tc'\] \(2\)"),
    ],
)
@pytest.mark.slow
def test_checkpoint_for_other_channels_or_regions_is_refused(phantom_checkpoint, phantom_root, override, message, tmp_path):
    cfg = compose_config(
        ["data=sample", f"data.root={phantom_root}", "data.num_folds=4", "data.samples_per_epoch=4",
         "data.patch_size=[32,32,32]", "trainer.max_epochs=2", "logger=csv", "model.net.base_filters=8",
         f"ckpt_path={phantom_checkpoint}", override],
        tmp_path, tmp_path / "cache",
    )
    with pytest.raises(ValueError, match=message):
        train(cfg)
