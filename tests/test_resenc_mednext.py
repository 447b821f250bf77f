"""The 2024 networks: nnU-Net's residual-encoder U-Net (ours) against the numbers of nnU-Net's own library,
and MedNeXt's sizes against MONAI's factory; their deep-supervision outputs and refusals.

The ResEnc parameter counts were counted with dynamic_network_architectures 0.4.4's ``ResidualEncoderUNet``
(the network nnU-Net's ResEnc presets build; its wheel needs timm and torchvision, so it is not a test
dependency): 3D, 6 stages, features 32..320, blocks (1, 3, 4, 6, 6, 6), 4 inputs, 3 outputs: 102,353,167;
2D, 7 stages, features 32..512: 105,919,186. The library always builds a head on the lowest decoder stage
(weight 0 in nnU-Net's loss); ours leaves it out: ``320 * 3 + 3`` and ``512 * 3 + 3`` fewer. With its
weights copied in, in order, the library's outputs equalled ours exactly (0.0 difference, 4 stages at 32^3).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_brats.models import MedNeXt, ResEncUNet
from lightning_brats.models.mednext import MEDNEXT_SIZES
from lightning_brats.models.resenc import ConvNormAct, ResidualBlockD


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("dims,n_stages,max_filters,library_count,lowest_head", [
    (3, 6, 320, 102_353_167, 320 * 3 + 3),
    (2, 7, 512, 105_919_186, 512 * 3 + 3),
])
def test_resenc_has_the_parameters_of_nnunets_library(dims, n_stages, max_filters, library_count, lowest_head):
    net = ResEncUNet(dims, 4, 3, n_stages=n_stages, max_filters=max_filters)
    assert _count(net) == library_count - lowest_head


def test_resenc_topology_is_the_planners():
    """Stem, residual blocks (1, 3, 4, 6, 6, 6) with the ResNet-D skip, one conv per decoder stage, 4 heads."""
    net = ResEncUNet(3, 4, 3)
    assert net.filters == [32, 64, 128, 256, 320, 320] and net.divisor == 32
    assert [len(stage) for stage in net.stages] == [1, 3, 4, 6, 6, 6]
    assert [len(stage) for stage in net.decoder] == [1] * 5 and net.num_outputs == 4
    first = net.stages[1][0]  # strided, 32 -> 64 channels: average pooling, then a bias-free 1x1 conv-norm
    assert isinstance(first.skip[0], nn.AvgPool3d) and first.skip[1].conv.kernel_size == (1, 1, 1)
    assert first.skip[1].conv.bias is None and first.conv1.conv.stride == (2, 2, 2)
    assert len(net.stages[5][0].skip) == 1  # 320 -> 320: pooling only
    assert len(net.stages[1][1].skip) == 0  # the identity
    norms = [m.norm for m in net.modules() if isinstance(m, ConvNormAct)]
    assert {type(n) for n in norms} == {nn.InstanceNorm3d} and all(n.eps == 1e-5 and n.affine for n in norms)
    assert {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)} == {0.01}
    # nnU-Net's init: every residual block starts as its skip (its last norm zeroed)
    blocks = [m for m in net.modules() if isinstance(m, ResidualBlockD)]
    assert len(blocks) == 26 and all(not b.conv2.norm.weight.any() for b in blocks)
    x = torch.randn(1, 64, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net.stages[1][1](x), torch.nn.functional.leaky_relu(x, 0.01))


@pytest.mark.parametrize("dims", [2, 3])
def test_resenc_deep_supervision_outputs_at_their_scales(dims):
    net = ResEncUNet(dims, 4, 3, n_stages=4, base_filters=4)
    x = torch.randn(2, 4, *(32,) * dims)
    out = net(x)
    assert [tuple(o.shape) for o in out] == [(2, 3, *(32,) * dims), (2, 3, *(16,) * dims)]
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *(32,) * dims)
        torch.testing.assert_close(net(x), out[0].detach())  # eval: the same full-resolution head


def test_resenc_refusals():
    with pytest.raises(ValueError, match=r"deep_supervision needs n_stages >= 4 .*got 3"):
        ResEncUNet(3, 4, 3, n_stages=3)
    with pytest.raises(ValueError, match=r"blocks_per_stage=\[1, 3\] must have n_stages=4 entries"):
        ResEncUNet(3, 4, 3, n_stages=4, blocks_per_stage=[1, 3])
    with pytest.raises(ValueError, match=r"spatial_dims must be 2 or 3, got 1"):
        ResEncUNet(1, 4, 3)
    net = ResEncUNet(3, 4, 3, n_stages=4, base_filters=4)
    net.check_patch_size([16, 32, 48])
    with pytest.raises(ValueError, match=r"ResEnc U-Net, 3D, 4 stages \(2\*\*\(n_stages-1\) = 8\) needs every patch size to be a multiple of 8 of at least 16; .*offending sizes \[8, 20\]\); nearest valid patch size: \[16, 24, 32\]"):
        net.check_patch_size([8, 20, 32])


@pytest.mark.parametrize("size", sorted(MEDNEXT_SIZES))
def test_mednext_sizes_are_monais_factorys(size):
    """Each size is MONAI's create_mednext (the paper's Table 1) less the bottleneck's head (weight 0, not built);
    L has the paper's 61.8 M parameters."""
    from monai.networks.nets.mednext import create_mednext

    reference = create_mednext(size, spatial_dims=3, in_channels=4, out_channels=3, kernel_size=3, deep_supervision=True)
    ours = MedNeXt(3, 4, 3, size=size, kernel_size=3)
    assert _count(ours) == _count(reference) - _count(reference.out_blocks[0])
    if size == "L":
        assert round(_count(ours) / 1e6, 1) == 61.7


def test_mednext_computes_monais_outputs_with_its_weights():
    """With MONAI's weights the training outputs are MONAI's, full resolution first, without the bottleneck's."""
    from monai.networks.nets.mednext import create_mednext

    torch.manual_seed(0)
    reference = create_mednext("B", spatial_dims=2, in_channels=4, out_channels=3, kernel_size=5, deep_supervision=True)
    ours = MedNeXt(2, 4, 3, size="B", kernel_size=5, init_filters=32)
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("out_blocks.0.")})
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        got, expected = ours.train()(x), reference.train()(x)
        assert len(got) == 4 and len(expected) == 5 and ours.num_outputs == 4
        for a, b in zip(got, expected[:4]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert [tuple(o.shape[2:]) for o in got] == [(32, 32), (16, 16), (8, 8), (4, 4)]
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=0, atol=0)


def test_mednext_fewer_stages_and_refusals():
    net = MedNeXt(3, 4, 3, size="M", init_filters=8, downsamplings=2)
    assert [len(s) for s in net.enc_stages] == [3, 4] and [len(s) for s in net.dec_stages] == [4, 3]  # the high-resolution ends
    assert net.divisor == 4 and net.num_outputs == 2
    out = net(torch.randn(1, 4, 16, 16, 16))
    assert [tuple(o.shape) for o in out] == [(1, 3, 16, 16, 16), (1, 3, 8, 8, 8)]
    with pytest.raises(ValueError, match=r"size='XL' is not one of \['B', 'L', 'M', 'S'\]"):
        MedNeXt(3, 4, 3, size="XL")
    with pytest.raises(ValueError, match=r"downsamplings=1 must be in \[2, 4\]"):
        MedNeXt(3, 4, 3, downsamplings=1)
    with pytest.raises(ValueError, match=r"MedNeXt S k3, 2D, 4 downsamplings needs every patch size to be a multiple of 16 of at least 32.*nearest valid patch size: \[32, 48\]"):
        MedNeXt(2, 4, 3).check_patch_size([16, 48])


def test_mednext_3d_depthwise_convolutions_leave_cpu_bf16_autocast():
    """PyTorch has no CPU bf16 kernel for depthwise 3D convolutions (a reference loop, 205 s per benchmark step):
    under CPU bf16 autocast they run in fp32, the dense 1x1 convolutions stay bf16, the weights keep their keys."""
    net = MedNeXt(3, 4, 3, init_filters=4, downsamplings=2)
    block = net.enc_stages[0][0]
    assert block.conv1.groups == 4 and "enc_stages.0.0.conv1.weight" in net.state_dict()
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block.conv1(x).dtype == torch.float32
        assert block.conv2(x).dtype == torch.bfloat16
        assert net.up_blocks[0].conv1(torch.randn(1, 16, 4, 4, 4)).dtype == torch.float32  # transposed, depthwise
    assert block.conv1(x).dtype == torch.float32 and MedNeXt(2, 4, 3).enc_stages[0][0].conv1.__class__ is nn.Conv2d


@pytest.mark.parametrize("name", ["resencunet2d_cpu", "mednext2d_cpu"])
def test_the_2d_configs_take_context_slices(name, tmp_path):
    """2.5D (data.context_slices=1): the first convolution takes 4 modalities x 3 slices."""
    import hydra

    from tests.conftest import compose_config

    cfg = compose_config([f"model={name}", "data=sample", "data.root=unused", "data.sampling=2d", "data.patch_size=[32,32]",
                          "data.context_slices=1"], tmp_path)
    net = hydra.utils.instantiate(cfg.model).net
    assert next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels == 12
