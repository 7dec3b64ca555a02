"""Attention for every ruyi model: one dispatch function and the registered backends.

``attention(q, k, v, mask=..., backend=..., self_attention=...)`` is the call every processor
makes; the backends (``attention=auto|sdpa|cudnn|flash|efficient|math|chunked|fa3``) decide which
kernel runs it, once per device.
"""

from ruyi.models.attention.auto import DEFAULT_BACKEND, AutoAttention, DevicePlan
from ruyi.models.attention.backends import (
    AttentionBackend,
    ChunkedAttention,
    CuDNNAttention,
    EfficientAttention,
    FlashAttention,
    MathAttention,
    SDPAAttention,
    set_attention_backend,
)
from ruyi.models.attention.dispatch import attention, prepare_attention
from ruyi.models.attention.fa3 import FlashAttention3
from ruyi.models.attention.kernels import DEFAULT_MAX_SCORE_BYTES, chunked_attention, pad_head_dim

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_MAX_SCORE_BYTES",
    "AttentionBackend",
    "AutoAttention",
    "ChunkedAttention",
    "CuDNNAttention",
    "DevicePlan",
    "EfficientAttention",
    "FlashAttention",
    "FlashAttention3",
    "MathAttention",
    "SDPAAttention",
    "attention",
    "chunked_attention",
    "pad_head_dim",
    "prepare_attention",
    "set_attention_backend",
]
