"""Backbones and embedding heads."""

from .backbones import ARCHS, BackboneSpec, build_backbone, build_from_spec, embedding_head, head_out_dim
from .cifar_nets import resnet8x4, resnet32x4, wrn_16_2, wrn_40_2

__all__ = [
    "ARCHS", "BackboneSpec", "build_backbone", "build_from_spec", "embedding_head", "head_out_dim", "resnet8x4",
    "resnet32x4", "wrn_16_2", "wrn_40_2",
]
