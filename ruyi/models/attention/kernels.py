"""Attention kernels shared by the backends: head-dim padding and the memory-bounded sliced fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_MAX_SCORE_BYTES = 1 << 30


def pad_head_dim(tensor: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last axis up to a multiple of ``multiple``.

    Zero columns in q and k add nothing to q kᵀ, and zero columns in v give zero output columns
    that are cut off again, so the result is exact as long as the scale stays 1/sqrt(original D).
    Kernels tuned for D = 64/96/128 can run faster on padded inputs than on D = 88 (benchmarks/RESULTS.md
    measured cuDNN ~8 % faster at 96 or 128 and FlashAttention-3 ~3 % faster at 96, pad included).
    """
    extra = -tensor.shape[-1] % multiple
    return F.pad(tensor, (0, extra)) if extra else tensor


def chunked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
    max_score_bytes: int = DEFAULT_MAX_SCORE_BYTES,
) -> torch.Tensor:
    """Same contract as :func:`attention`, over query slices whose scores fit ``max_score_bytes``.

    Softmax runs along keys only, so every query row is independent and slicing is exact. Without
    this, torch's math kernel asks for the whole score matrix at once (~100 GiB for the 7B at 768
    x 120 frames) on CPUs and on GPUs whose fused kernels do not cover the dtype.
    """
    lq = query.shape[-2]
    rows = max(1, max_score_bytes // max(1, score_bytes(query, key) // max(1, lq)))
    out = query.new_empty(*query.shape[:-1], value.shape[-1])
    for start in range(0, lq, rows):
        stop = min(lq, start + rows)
        part = None
        if mask is not None:
            part = mask if mask.shape[-2] == 1 else mask[..., start:stop, :]
        rows_q = query[..., start:stop, :]
        out[..., start:stop, :] = F.scaled_dot_product_attention(
            rows_q, key, value, attn_mask=part, scale=scale
        )
    return out


def score_bytes(query: torch.Tensor, key: torch.Tensor) -> int:
    """Bytes of the (B, heads, Lq, Lk) score matrix a non-fused kernel would hold."""
    # the math kernel keeps fp32 scores (and their softmax) whatever the input dtype
    return query.shape[:-1].numel() * key.shape[-2] * 4
