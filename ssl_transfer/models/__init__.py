"""Backbones and embedding heads."""

from .backbones import BackboneSpec, build_backbone, build_from_spec, embedding_head, head_out_dim

__all__ = ["BackboneSpec", "build_backbone", "build_from_spec", "embedding_head", "head_out_dim"]
