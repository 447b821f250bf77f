"""The U-Net: output shapes in 2D and 3D, gradients, the divisibility check; losses and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_brats.evaluation.metrics import RegionDice, region_dice
from lightning_brats.inference.sliding_window import predict_logits
from lightning_brats.models import UNet
from lightning_brats.training.losses import DiceBCELoss


@pytest.mark.parametrize("dims,size", [(2, (64, 48)), (3, (32, 48, 16))])
def test_unet_output_shape_and_backward(dims, size):
    net = UNet(dims, in_channels=4, out_channels=3, depth=4, base_filters=8)
    x = torch.randn(2, 4, *size)
    out = net(x)
    assert out.shape == (2, 3, *size)
    DiceBCELoss()(out, (torch.rand_like(out) > 0.5).float()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_check_patch_size_names_depth_and_nearest():
    net = UNet(3, 4, 3, depth=5)
    net.check_patch_size([128, 128, 128])
    with pytest.raises(ValueError, match=r"depth 5 \(2\*\*\(depth-1\) = 16\) needs every patch size to be a multiple of 16; patch size \[120, 128, 100\] is not.*nearest valid patch size: \[128, 128, 96\]"):
        net.check_patch_size([120, 128, 100])


def _monai_dynunet_twin(net: UNet, dims: int, depth: int, filters: list[int]):
    """MONAI's DynUNet with the stages of ``net`` and ``net``'s weights copied in, module by module."""
    from monai.networks.nets import DynUNet

    from lightning_brats.models.layers import ACTIVATIONS, NORMS

    strides = [1] + [2] * (depth - 1)
    dyn = DynUNet(dims, 4, 3, [3] * depth, strides, strides[1:], filters=filters, norm_name=NORMS["instance"],
                  act_name=ACTIVATIONS["leakyrelu"], deep_supervision=net.deep_supervision,
                  deep_supr_num=max(1, net.num_outputs - 1), trans_bias=True)
    assert sum(p.numel() for p in dyn.parameters()) == sum(p.numel() for p in net.parameters())
    dyn.input_block.load_state_dict(net.encoder[0].state_dict())
    for i in range(1, depth - 1):
        dyn.downsamples[i - 1].load_state_dict(net.encoder[i].state_dict())
    dyn.bottleneck.load_state_dict(net.encoder[-1].state_dict())
    for i in range(depth - 1):
        dyn.upsamples[i].transp_conv.conv.load_state_dict(net.upsample[i].state_dict())
        dyn.upsamples[i].conv_block.load_state_dict(net.decoder[i].state_dict())
    dyn.output_block.conv.conv.load_state_dict(net.heads[-1].state_dict())
    for k in range(net.num_outputs - 1):  # MONAI counts its heads from the top, ours from the bottom
        dyn.deep_supervision_heads[k].conv.conv.load_state_dict(net.heads[-2 - k].state_dict())
    return dyn


@pytest.mark.parametrize("dims,depth,deep_supervision", [(3, 4, False), (2, 5, True), (3, 4, True)])
def test_plain_and_deeply_supervised_unet_equal_monai_dynunet_with_the_same_weights(dims, depth, deep_supervision):
    """Our plain U-Net (and its deep-supervision heads) is MONAI's DynUNet given the same weights: the
    reference implementation checks the architecture. It stays ours (see lightning_brats/models/unet.py)."""
    torch.manual_seed(0)
    net = UNet(dims, 4, 3, depth=depth, base_filters=8, max_filters=64, deep_supervision=deep_supervision)
    dyn = _monai_dynunet_twin(net, dims, depth, [min(8 * 2**i, 64) for i in range(depth)])
    size = 32 if dims == 2 else 16
    x = torch.randn(2, 4, *(size,) * dims)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), dyn.eval()(x), rtol=0, atol=1e-6)
        if deep_supervision:  # training: the lower heads at their own scales (MONAI keeps them in dyn.heads)
            ours = net.train()(x)
            dyn.train()(x)
            assert len(ours) == depth - 2
            for k, head in enumerate(dyn.heads[: depth - 3]):
                assert head.shape[2:] == (size // 2 ** (k + 1),) * dims
                torch.testing.assert_close(ours[k + 1], head, rtol=0, atol=1e-6)


def test_residual_unet_is_not_monai_dynunet():
    """MONAI's DynUNet(res_block=True) keeps plain blocks in its decoder; ours is residual in both paths."""
    from monai.networks.blocks import UnetBasicBlock, UnetResBlock
    from monai.networks.nets import DynUNet

    ours = UNet(3, 4, 3, depth=3, base_filters=8, block="residual")
    dyn = DynUNet(3, 4, 3, [3] * 3, [1, 2, 2], [2, 2], filters=[8, 16, 32], res_block=True)
    assert isinstance(dyn.downsamples[0], UnetResBlock) and isinstance(ours.encoder[1], UnetResBlock)
    assert isinstance(dyn.upsamples[0].conv_block, UnetBasicBlock) and isinstance(ours.decoder[0], UnetResBlock)


@pytest.mark.parametrize("patch_size", [(32, 32, 32), (32, 32)])
def test_whole_case_inference_shapes(patch_size):
    net = UNet(len(patch_size), 4, 3, depth=3, base_filters=4).eval()
    slices = 30 if len(patch_size) == 3 else 6  # 2D runs a sliding window per axial slice: a few suffice
    image = torch.randn(1, 4, 40, 50, slices)
    with torch.no_grad():
        logits = predict_logits(net, image, patch_size, overlap=0.5, sw_batch_size=4)
    assert logits.shape == (1, 3, 40, 50, slices)


def test_2d_inference_is_slice_by_slice():
    """A 2D network sees each axial slice alone: changing one slice changes only its output."""
    net = UNet(2, 1, 1, depth=2, base_filters=4).eval()
    image = torch.randn(1, 1, 16, 16, 6)
    changed = image.clone()
    changed[..., 3] += 5
    with torch.no_grad():
        a, b = predict_logits(net, image, (16, 16), 0.5, 4), predict_logits(net, changed, (16, 16), 0.5, 4)
    differs = (a - b).abs().flatten(0, 3).amax(0) > 1e-6
    assert differs.tolist() == [False, False, False, True, False, False]


@pytest.mark.parametrize("batch,size,patch,overlap,sw_batch_size", [
    (2, (32, 24), (32, 24), 0.5, 3),   # slice = window: the Gaussian weights cancel, logits = net(slice)
    (1, (40, 52), (32, 32), 0.5, 4),   # overlapping windows in the plane
    (2, (20, 28), (32, 32), 0.25, 1),  # slice smaller than the window: padded
])
def test_2d_inference_equals_each_axial_slice_on_its_own(batch, size, patch, overlap, sw_batch_size):
    """The volume's 2D inference (MONAI SliceInferer) equals running every axial slice alone, in any batch."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    net = UNet(2, 4, 3, depth=3, base_filters=4).eval()
    image = torch.randn(batch, 4, *size, 5)
    with torch.no_grad():
        logits = predict_logits(net, image, patch, overlap, sw_batch_size)
        if size == patch:
            expected = torch.stack([net(image[..., k]) for k in range(5)], dim=-1)
        else:  # one case and one slice at a time, no batching across slices or cases
            expected = torch.stack([torch.cat([
                sliding_window_inference(image[i: i + 1, ..., k], list(patch), 1, net, overlap, mode="gaussian")
                for i in range(batch)]) for k in range(5)], dim=-1)
    assert logits.shape == (batch, 3, *size, 5)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_region_dice_brats_conventions():
    target = torch.zeros(1, 3, 4, 4, 4, dtype=torch.bool)
    pred = torch.zeros_like(target)
    target[0, 0, :2] = True  # WT: 32 voxels
    pred[0, 0, :1] = True  # 16 of them predicted
    pred[0, 2, 0, 0, 0] = True  # ET predicted where none exists
    dice = region_dice(pred, target)[0]
    assert dice[0].item() == pytest.approx(2 * 16 / 48)
    assert dice[1].item() == 1.0  # both empty
    assert dice[2].item() == 0.0  # exactly one empty
    metric = RegionDice(3)
    metric.update(pred, target)
    metric.update(target, target)
    assert metric.compute().tolist() == pytest.approx([(2 / 3 + 1) / 2, 1.0, 0.5])


@pytest.mark.slow  # every zoo network built (about 3 s): over a second of the quick loop
def test_every_zoo_network_is_a_segmentation_network_and_others_are_named():
    """The module reads num_outputs and check_patch_size through one contract, not getattr defaults."""
    import hydra
    from torch import nn

    from lightning_brats.models import SegmentationNetwork, check_network
    from tests.conftest import MODEL_VARIANTS, compose_config

    for name, _, overrides in MODEL_VARIANTS:
        cfg = compose_config([f"model={name}", "data=sample", *overrides], Path("/tmp/unused"))
        net = hydra.utils.instantiate(cfg.model.net)
        assert isinstance(net, SegmentationNetwork), name
        assert net.num_outputs >= 1
    with pytest.raises(TypeError, match=r"model=plain: Conv3d lacks num_outputs and check_patch_size"):
        check_network(nn.Conv3d(4, 3, 1), "plain")
