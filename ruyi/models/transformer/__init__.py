"""Ruyi's 3D diffusion transformer."""

from ruyi.models.transformer.block import RuyiDiTBlock
from ruyi.models.transformer.processor import RuyiAttnProcessor
from ruyi.models.transformer.transformer3d import RuyiTransformer3D, rotary_embedding

__all__ = [
    "RuyiAttnProcessor", "RuyiDiTBlock", "RuyiTransformer3D", "rotary_embedding",
]  # fmt: skip
