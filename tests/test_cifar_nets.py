"""The CIFAR networks of the distillation literature (resnet8x4, resnet32x4, wrn_16_2, wrn_40_2):
published parameter counts, output shapes, structure, and the spec round trip."""

import pytest
import torch
from torch import nn

from ssl_transfer.models import ARCHS, build_backbone, build_from_spec
from ssl_transfer.models.cifar_nets import BasicBlock, CifarResNet, WideBasicBlock, WideResNet

NETS = ["resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2"]
#: Published CIFAR-100 parameter counts (CRD, Tian et al. 2020, Table 1), with the 100-way classifier.
PUBLISHED = {"resnet8x4": 1.23e6, "resnet32x4": 7.43e6, "wrn_16_2": 0.70e6, "wrn_40_2": 2.26e6}
FEAT_DIM = {"resnet8x4": 256, "resnet32x4": 256, "wrn_16_2": 128, "wrn_40_2": 128}
DEPTH = {"resnet8x4": 8, "resnet32x4": 32, "wrn_16_2": 16, "wrn_40_2": 40}
BLOCKS_PER_STAGE = {"resnet8x4": 1, "resnet32x4": 5, "wrn_16_2": 2, "wrn_40_2": 6}


def count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def with_classifier(arch: str, in_channels: int = 3, classes: int = 100) -> int:
    net, spec = build_backbone(arch, "cifar", in_channels)
    return count(net) + count(nn.Linear(spec.feat_dim, classes))


@pytest.mark.parametrize("arch", NETS)
def test_parameter_count_matches_the_literature(arch):
    assert arch in ARCHS
    assert with_classifier(arch) == pytest.approx(PUBLISHED[arch], rel=0.02)


def test_resnet8x4_parameter_count_by_hand():
    # Convs have no bias; a BN has 2c parameters (weight, bias); running stats are buffers.
    stem = 3 * 32 * 9 + 2 * 32  # 864 + 64 = 928
    # stage: conv3x3 c_in->c, BN, conv3x3 c->c, BN, 1x1 projection c_in->c, BN (channels change in all three)
    stage = lambda c_in, c: c_in * c * 9 + c * c * 9 + c_in * c + 3 * 2 * c  # noqa: E731
    assert stage(32, 64) == 18432 + 36864 + 2048 + 384 == 57728
    assert stage(64, 128) == 73728 + 147456 + 8192 + 768 == 230144
    assert stage(128, 256) == 294912 + 589824 + 32768 + 1536 == 919040
    backbone = stem + stage(32, 64) + stage(64, 128) + stage(128, 256)  # 1,207,840
    fc = 256 * 100 + 100  # 25,700
    net, _ = build_backbone("resnet8x4", "cifar", 3)
    assert count(net) == backbone == 1_207_840
    assert with_classifier("resnet8x4") == backbone + fc == 1_233_540
    net1, _ = build_backbone("resnet8x4", "cifar", 1)
    assert count(net) - count(net1) == 2 * 32 * 9  # one input channel fewer in the stem conv


def test_wrn_16_2_parameter_count_by_hand():
    # Pre-activation block c_in->c: BN(c_in), conv3x3 c_in->c, BN(c), conv3x3 c->c, 1x1 shortcut if c_in != c.
    block = lambda c_in, c: 2 * c_in + c_in * c * 9 + 2 * c + c * c * 9 + (c_in * c if c_in != c else 0)  # noqa: E731
    stages = sum(block(c_in, c) + block(c, c) for c_in, c in ((16, 32), (32, 64), (64, 128)))
    total = 3 * 16 * 9 + stages + 2 * 128  # stem conv + 3 stages of 2 blocks + final BN
    net, _ = build_backbone("wrn_16_2", "cifar", 3)
    assert count(net) == total == 690_384
    assert with_classifier("wrn_16_2") == total + 128 * 100 + 100 == 703_284


@pytest.mark.parametrize("arch", NETS)
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (1, 32), (3, 28)])
def test_output_shape(arch, channels, size):
    net, spec = build_backbone(arch, "cifar", channels)
    assert spec.feat_dim == FEAT_DIM[arch] == net.feat_dim
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, channels, size, size))
    assert out.shape == (2, FEAT_DIM[arch])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", NETS)
def test_structure(arch):
    net, _ = build_backbone(arch, "cifar", 3)
    n = BLOCKS_PER_STAGE[arch]
    if arch.startswith("resnet"):
        assert isinstance(net, CifarResNet)
        stages = [net.layer1, net.layer2, net.layer3]
        assert [len(s) for s in stages] == [n] * 3
        assert all(isinstance(b, BasicBlock) for s in stages for b in s)
        assert [s[0].conv2.out_channels for s in stages] == [64, 128, 256]
        assert net.conv1.out_channels == 32
        # projection shortcuts exactly where channels or resolution change: the first block of each stage
        assert [b.downsample is not None for s in stages for b in s] == ([True] + [False] * (n - 1)) * 3
        assert [s[0].conv1.stride for s in stages] == [(1, 1), (2, 2), (2, 2)]
    else:
        assert isinstance(net, WideResNet)
        stages = [net.block1.layer, net.block2.layer, net.block3.layer]
        assert [len(s) for s in stages] == [n] * 3
        assert all(isinstance(b, WideBasicBlock) for s in stages for b in s)
        assert [s[0].conv2.out_channels for s in stages] == [32, 64, 128]  # 16k, 32k, 64k with k = 2
        assert net.conv1.out_channels == 16
        assert [hasattr(b, "convShortcut") for s in stages for b in s] == ([True] + [False] * (n - 1)) * 3
        assert not any(isinstance(m, nn.Dropout) for m in net.modules())
    # The depth in the name, by each paper's convention. ResNet (6n + 2): stem conv + 6n block convs
    # + classifier, projections not counted. WRN (6n + 4): stem conv + 6n block convs + 3 shortcut convs.
    convs3 = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in net.modules())
    convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert convs3 == 6 * n + 1
    assert (convs3 + 1 if arch.startswith("resnet") else convs) == DEPTH[arch]


@pytest.mark.parametrize("arch", NETS)
def test_spec_round_trip(arch):
    net, spec = build_backbone(arch, "small", 1)
    assert spec.to_dict() == {"arch": arch, "stem": "small", "in_channels": 1, "feat_dim": FEAT_DIM[arch]}
    rebuilt = build_from_spec(spec.to_dict())
    assert type(rebuilt) is type(net)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    rebuilt.load_state_dict(net.state_dict())
    net.eval(), rebuilt.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net(x), rebuilt(x))


def test_stem_is_recorded_but_not_used():
    a, sa = build_backbone("wrn_16_2", "imagenet", 3)
    b, sb = build_backbone("wrn_16_2", "cifar", 3)
    assert (sa.stem, sb.stem) == ("imagenet", "cifar")
    assert str(a) == str(b)
    with pytest.raises(ValueError, match="stem"):
        build_backbone("wrn_16_2", "nope", 3)
    with pytest.raises(ValueError, match="wrn_16_2"):  # the hyphenated literature name is not an arch
        build_backbone("wrn-16-2", "cifar", 3)


def test_reference_key_names():
    """Module names follow RepDistiller, so its checkpoints load once ``fc.*`` is dropped."""
    resnet, _ = build_backbone("resnet8x4", "cifar", 3)
    keys = set(resnet.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.weight", "layer3.0.bn2.bias"} <= keys
    wrn, _ = build_backbone("wrn_40_2", "cifar", 3)
    keys = set(wrn.state_dict())
    assert {"conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
            "block3.layer.5.conv2.weight", "bn1.weight"} <= keys
    assert "block1.layer.1.convShortcut.weight" not in keys


def test_wide_block_shortcut_reads_the_preactivated_input():
    torch.manual_seed(0)
    block = WideBasicBlock(4, 8, stride=2).eval()
    with torch.no_grad():
        block.conv2.weight.zero_()  # residual branch off: the output is the shortcut alone
        block.bn1.running_mean.fill_(0.5)
        x = torch.randn(1, 4, 6, 6)
        expect = block.convShortcut(torch.relu(block.bn1(x)))
        assert torch.allclose(block(x), expect)
        same = WideBasicBlock(8, 8).eval()
        same.conv2.weight.zero_()
        y = torch.randn(1, 8, 6, 6)
        assert torch.equal(same(y), y)  # identity shortcut on the raw input


def test_gradients_reach_the_stem():
    net, _ = build_backbone("resnet8x4", "cifar", 1)
    net(torch.randn(4, 1, 28, 28)).pow(2).mean().backward()
    assert net.conv1.weight.grad is not None and net.conv1.weight.grad.abs().sum() > 0


def test_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(9, (32, 64, 128, 256))
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(15, 2)
