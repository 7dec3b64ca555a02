"""Ruyi's 3D diffusion transformer."""

from ruyi.models.transformer.transformer3d import RuyiTransformer3D, SkipStack, rotary_embedding

__all__ = ["RuyiTransformer3D", "SkipStack", "rotary_embedding"]
