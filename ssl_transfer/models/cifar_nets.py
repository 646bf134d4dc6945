"""CIFAR networks of the knowledge-distillation literature (CRD / RepDistiller's teachers and
students), which torchvision lacks: ``resnet8x4``, ``resnet32x4``, ``wrn_16_2``, ``wrn_40_2``.

Each builder returns a backbone mapping (n, C, H, W) to penultimate features (n, feat_dim):
the networks of Tian et al. (CRD, ICLR 2020; code: HobbitLong/RepDistiller ``models/resnet.py``
and ``models/wrn.py``) without the classifier ``fc``. The published parameter counts
(resnet8x4 1.23M, resnet32x4 7.43M, wrn-16-2 0.70M, wrn-40-2 2.26M) are for CIFAR-100 models
*including* a 100-way linear classifier (feat_dim * 100 + 100 parameters).

**CIFAR ResNet** (He et al. 2016, Sec. 4.2), ``depth = 6n + 2``: a 3x3 conv-BN-ReLU stem of
``widths[0]`` channels, then three stages of ``n`` basic blocks (conv3x3-BN-ReLU-conv3x3-BN,
plus identity, ReLU) of ``widths[1:]`` channels with strides 1, 2, 2. A block whose input
differs in channels or resolution takes a 1x1 conv-BN projection shortcut; in the ``x4``
networks (widths 32, 64, 128, 256, i.e. 4x the usual 16, 16, 32, 64) that includes the first
block of stage 1 (32 -> 64 channels). ``resnet8x4``: depth 8, 1 block per stage;
``resnet32x4``: depth 32, 5 blocks per stage; both 256-d features.

**Wide ResNet** WRN-d-k (Zagoruyko & Komodakis 2016), ``d = 6n + 4``: a 3x3 conv of 16
channels, three stages of ``n`` pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3, plus
shortcut) of 16k, 32k, 64k channels with strides 1, 2, 2, then BN-ReLU; dropout 0. A block that
changes the width applies its first BN-ReLU to the input *before* splitting, and its 1x1 conv
shortcut reads that pre-activated input (as in the reference code). ``wrn_16_2`` (the
literature's WRN-16-2): 2 blocks per stage; ``wrn_40_2`` (WRN-40-2): 6 blocks per stage; both
128-d features.

Differences from the reference, none of which changes the parameters: the input has
``in_channels`` channels (1 for Fashion-MNIST, 3 for CIFAR); pooling is global
(``AdaptiveAvgPool2d(1)``, equal to the reference ``AvgPool2d(8)`` on 32x32 inputs, and also
valid on 28x28, where the last stage sees 7x7 maps); ``forward`` returns only the features.
Module names follow the reference (``layer1.0.downsample.0``, ``block1.layer.0.convShortcut``,
...), so RepDistiller's published checkpoints load with their ``fc.*`` dropped. Convolutions
are initialised He-normal (fan-out), as in the reference.

Example::

    net = wrn_40_2(in_channels=3)
    net(torch.randn(8, 3, 32, 32)).shape  # (8, 128) == (8, net.feat_dim)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _init_weights(net: nn.Module) -> None:
    """He-normal (fan-out) convolutions; BN weight 1, bias 0 (PyTorch's default, made explicit)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Post-activation residual block: (n, c_in, H, W) -> (n, c_out, H / stride, W / stride).

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; ``shortcut`` is the identity, or a
    1x1 conv-BN (``downsample``) when channels or resolution change.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """CIFAR ResNet of ``depth = 6n + 2`` with ``widths = (stem, stage1, stage2, stage3)``.

    (n, in_channels, H, W) -> (n, widths[3]); ``layer1``..``layer3`` hold ``n`` blocks each.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = widths[3]
        _init_weights(self)

    @staticmethod
    def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(c_in, c_out, stride), *(BasicBlock(c_out, c_out) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (n, w0, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (n, w3, H / 4, W / 4)
        return torch.flatten(self.avgpool(x), 1)  # (n, w3)


class WideBasicBlock(nn.Module):
    """Pre-activation wide block: (n, c_in, H, W) -> (n, c_out, H / stride, W / stride).

    Same width: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``. Width change: with
    ``a = relu(bn1(x))``, ``convShortcut(a) + conv2(relu(bn2(conv1(a))))`` (1x1 conv shortcut).
    The attribute name ``convShortcut`` is the reference's, kept for checkpoint compatibility.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(c_out, c_out)
        self.equal_in_out = c_in == c_out
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)
        elif stride != 1:
            raise ValueError("a wide block with equal widths must have stride 1 (identity shortcut)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        return out + (x if self.equal_in_out else self.convShortcut(a))


class _WideStage(nn.Module):
    """``n`` wide blocks in ``self.layer`` (the reference's ``NetworkBlock``, for its key names)."""

    def __init__(self, blocks: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(WideBasicBlock(c_in, c_out, stride),
                                   *(WideBasicBlock(c_out, c_out) for _ in range(blocks - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` (``depth = 6n + 4``): (n, in_channels, H, W) -> (n, 64 * widen).

    ``block1``..``block3`` hold ``n`` blocks each (in ``blockI.layer``); no dropout.
    """

    def __init__(self, depth: int, widen: int, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        w = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = _conv3x3(in_channels, w[0])
        self.block1 = _WideStage(n, w[0], w[1], stride=1)
        self.block2 = _WideStage(n, w[1], w[2], stride=2)
        self.block3 = _WideStage(n, w[2], w[3], stride=2)
        self.bn1 = nn.BatchNorm2d(w[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = w[3]
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))  # (n, 64k, H / 4, W / 4)
        x = self.relu(self.bn1(x))
        return torch.flatten(self.avgpool(x), 1)  # (n, 64k)


def resnet8x4(in_channels: int = 3) -> CifarResNet:
    """ResNet-8x4: widths 32, 64, 128, 256; 1 block per stage; 256-d features, 1.21M parameters."""
    return CifarResNet(8, (32, 64, 128, 256), in_channels)


def resnet32x4(in_channels: int = 3) -> CifarResNet:
    """ResNet-32x4: widths 32, 64, 128, 256; 5 blocks per stage; 256-d features, 7.41M parameters."""
    return CifarResNet(32, (32, 64, 128, 256), in_channels)


def wrn_16_2(in_channels: int = 3) -> WideResNet:
    """WRN-16-2: widths 16, 32, 64, 128; 2 blocks per stage; 128-d features, 0.69M parameters."""
    return WideResNet(16, 2, in_channels)


def wrn_40_2(in_channels: int = 3) -> WideResNet:
    """WRN-40-2: widths 16, 32, 64, 128; 6 blocks per stage; 128-d features, 2.24M parameters."""
    return WideResNet(40, 2, in_channels)


#: Builders by ``ARCHS`` name, and their feature dimensions.
CIFAR_NETS = {"resnet8x4": resnet8x4, "resnet32x4": resnet32x4, "wrn_16_2": wrn_16_2, "wrn_40_2": wrn_40_2}
CIFAR_FEAT_DIMS = {"resnet8x4": 256, "resnet32x4": 256, "wrn_16_2": 128, "wrn_40_2": 128}
