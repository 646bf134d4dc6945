"""Backbones: torchvision ResNets with a stem chosen for the input size.

Stems (``stem``):

- ``imagenet``: torchvision's 7x7 stride-2 conv + 3x3 stride-2 max-pool. At 28x28 the
  residual stages see 7x7 maps; about 10x cheaper than ``cifar`` and the quickstart default.
- ``cifar``: 3x3 stride-1 conv, no max-pool (the usual CIFAR / STL stem).
- ``small``: 3x3 stride-2 conv, no max-pool (stages see 14x14 at 28x28).

The classifier is replaced by ``nn.Identity`` so a backbone maps (n, C, H, W) to (n, feat_dim).

``small_cnn`` (a compression student, not a teacher): four 3x3 conv-BN-ReLU layers of 32, 64,
128 and 256 channels, strides 1, 2, 2, 2, global average pooling; 256-d features, 0.39M
parameters (ResNet-18: 11.2M) and about 12M multiply-adds at 28x28 (ResNet-18 with the
ImageNet stem: about 30M). It has no stem variants; ``stem`` is recorded but not used.

CIFAR networks of the distillation literature (:mod:`.cifar_nets`, as in CRD / RepDistiller):
``resnet8x4`` and ``resnet32x4`` (256-d features), ``wrn_16_2`` and ``wrn_40_2`` (128-d; the
literature's WRN-16-2 / WRN-40-2, written ``wrn-16-2``: use the underscore names here). They
have a fixed 3x3 stride-1 stem; ``stem`` is recorded in the spec but not used, as for
``small_cnn``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision import models as tvm

from .cifar_nets import CIFAR_FEAT_DIMS, CIFAR_NETS

_RESNETS = {"resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50}
STEMS = ("imagenet", "cifar", "small")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild a backbone without the config that made it."""

    arch: str
    stem: str
    in_channels: int
    feat_dim: int

    def to_dict(self) -> dict:
        return asdict(self)


def small_cnn(in_channels: int) -> nn.Module:
    """Four conv-BN-ReLU layers (32, 64, 128, 256 channels; strides 1, 2, 2, 2) + average pool."""
    layers, c_in = [], in_channels
    for c_out, stride in ((32, 1), (64, 2), (128, 2), (256, 2)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


ARCHS = (*_RESNETS, "small_cnn", *CIFAR_NETS)


def build_backbone(arch: str, stem: str, in_channels: int) -> tuple[nn.Module, BackboneSpec]:
    """Return ``(backbone, spec)``; the backbone outputs (n, spec.feat_dim) features."""
    if arch not in ARCHS:
        raise ValueError(f"unknown backbone '{arch}'; use one of {', '.join(ARCHS)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem '{stem}'; use one of {', '.join(STEMS)}")
    if arch == "small_cnn":
        return small_cnn(in_channels), BackboneSpec(arch=arch, stem=stem, in_channels=in_channels, feat_dim=256)
    if arch in CIFAR_NETS:  # fixed CIFAR stem; ``stem`` only recorded
        spec = BackboneSpec(arch=arch, stem=stem, in_channels=in_channels, feat_dim=CIFAR_FEAT_DIMS[arch])
        return CIFAR_NETS[arch](in_channels), spec
    net = _RESNETS[arch](weights=None)
    if stem == "imagenet":
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        stride = 1 if stem == "cifar" else 2
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=stride, padding=1, bias=False)
        net.maxpool = nn.Identity()
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, BackboneSpec(arch=arch, stem=stem, in_channels=in_channels, feat_dim=feat_dim)


def build_from_spec(spec: dict | BackboneSpec) -> nn.Module:
    spec = spec if isinstance(spec, BackboneSpec) else BackboneSpec(**spec)
    net, _ = build_backbone(spec.arch, spec.stem, spec.in_channels)
    return net


def embedding_head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """Student embedding head: ``none`` (identity), ``linear``, or ``mlp`` (Linear-BN-ReLU-Linear)."""
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        from lightly.models.modules.heads import SimCLRProjectionHead

        return SimCLRProjectionHead(in_dim, in_dim, out_dim)
    raise ValueError(f"unknown head '{kind}'; use none, linear or mlp")


def head_out_dim(kind: str, in_dim: int, out_dim: int) -> int:
    return in_dim if kind == "none" else out_dim


@torch.no_grad()
def copy_weights(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())
