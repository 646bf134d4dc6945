"""Embedding networks of the metric-learning task: a ResNet trunk, global pooling, a linear head.

As in the Proxy-Anchor and LabelRelaxation networks::

    f = pool(layer4(x))            (n, C)   C = 512 (ResNet-18/34) or 2048 (ResNet-50)
    e = W f + b                    (n, d)   d = embed_dim (512, 128, 64, ...)

``pool`` (:class:`GlobalPool`): ``avg_max`` = global average + global max pooling (summed, as the
reference networks), ``avg`` = torchvision's average pooling, ``max``. The pooling replaces the
trunk's ``avgpool`` and has no parameters, so the trunk's state dict is torchvision's: ImageNet
weights load into it (:func:`load_imagenet_weights`) and saved backbones rebuild from their
:class:`~ssl_transfer.models.BackboneSpec` (the pooling is recorded beside it).

The head (:func:`embedding_linear`) is initialised as LabelRelaxation's: orthogonal weight, zero
bias. Embeddings are not normalised here: Proxy-Anchor and the relaxed loss normalise what they
need, and retrieval ranks by cosine similarity.

Example::

    backbone, spec = build_trunk("resnet50", "imagenet", 3, pooling="avg_max")
    load_imagenet_weights(backbone, spec, "resnet50-0676ba61.pth", "metric.imagenet_weights")
    head = embedding_linear(spec.feat_dim, 512)
    e = head(backbone(x))          # (n, 3, 224, 224) -> (n, 512)
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import BackboneSpec, build_backbone

POOLINGS = ("avg", "max", "avg_max")


class GlobalPool(nn.Module):
    """(n, C, H, W) -> (n, C, 1, 1): average, max, or their sum (``avg_max``)."""

    def __init__(self, kind: str = "avg_max"):
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"unknown pooling '{kind}'; use one of {', '.join(POOLINGS)}")
        self.kind = kind

    def extra_repr(self) -> str:
        return self.kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return x.mean(dim=(2, 3), keepdim=True)
        if self.kind == "max":
            return x.amax(dim=(2, 3), keepdim=True)
        return x.mean(dim=(2, 3), keepdim=True) + x.amax(dim=(2, 3), keepdim=True)


def build_trunk(arch: str, stem: str, in_channels: int, pooling: str = "avg_max") -> tuple[nn.Module, BackboneSpec]:
    """A torchvision ResNet mapping (n, C_in, H, W) to pooled (n, spec.feat_dim) features."""
    net, spec = build_backbone(arch, stem, in_channels)
    if not hasattr(net, "avgpool"):
        raise ValueError(f"backbone '{arch}' has no global pooling to replace; use a ResNet")
    net.avgpool = GlobalPool(pooling)
    return net, spec


def set_pooling(backbone: nn.Module, pooling: str) -> nn.Module:
    """Put ``pooling`` into a ResNet rebuilt from its spec (e.g. by :func:`ssl_transfer.io.load_model`)."""
    backbone.avgpool = GlobalPool(pooling)
    return backbone


def embedding_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """The embedding head: ``nn.Linear(in_dim, out_dim)``, orthogonal weight, zero bias."""
    head = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def load_imagenet_weights(backbone: nn.Module, spec: BackboneSpec, path: str, key: str) -> dict:
    """Load a torchvision ImageNet state dict (classifier ``fc.*`` dropped) into ``backbone``,
    strictly; one-line errors for a missing file and for weights of another architecture."""
    from ..config.metric import check_weights_file
    from .weights import load_backbone_weights

    check_weights_file(path, key)
    return load_backbone_weights(path, backbone, spec, prefix=None)


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm layers of ``module`` to eval mode (running statistics fixed) with their affine
    parameters frozen; call again after every ``module.train()`` (a LightningModule's ``train``
    override does), since ``train()`` switches them back."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


__all__ = ["GlobalPool", "POOLINGS", "build_trunk", "embedding_linear", "freeze_batchnorm", "load_imagenet_weights",
           "set_pooling"]
