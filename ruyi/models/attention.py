"""The one attention entry point of every ruyi model, with a memory-bounded fallback.

Fallback order of :func:`attention`:

1. ``torch.nn.functional.scaled_dot_product_attention`` as is, when the score matrix is small
   or torch has a fused kernel (flash / memory-efficient) for these inputs: it never materialises
   the (Lq, Lk) scores.
2. Otherwise (CPU, or a GPU whose fused kernels do not cover the dtype, e.g. bf16 on a V100) the
   same call over slices of the queries, each slice's scores within ``max_score_bytes``. Without
   this the math kernel asks for the whole score matrix at once, which for a 7B video DiT is
   ~100 GiB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_MAX_SCORE_BYTES = 1 << 30


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    max_score_bytes: int = DEFAULT_MAX_SCORE_BYTES,
) -> torch.Tensor:
    """query (B, heads, Lq, D), key (B, heads, Lk, D), value (B, heads, Lk, Dv) -> (B, heads, Lq, Dv).

    softmax(q kᵀ / sqrt(D)) v. ``mask`` broadcasts to (B, heads, Lq, Lk): bool (True = attend) or
    additive float.
    """
    if _score_bytes(query, key) <= max_score_bytes or _fused_kernel_applies(query, key, value, mask):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    return chunked_attention(query, key, value, mask=mask, max_score_bytes=max_score_bytes)


def chunked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    max_score_bytes: int = DEFAULT_MAX_SCORE_BYTES,
) -> torch.Tensor:
    """Same contract as :func:`attention`, computed over query slices whose scores fit ``max_score_bytes``.

    Softmax runs along keys only, so every query row is independent and slicing is exact.
    """
    lq = query.shape[-2]
    rows = max(1, max_score_bytes // max(1, _score_bytes(query, key) // max(1, lq)))
    out = query.new_empty(*query.shape[:-1], value.shape[-1])
    for start in range(0, lq, rows):
        stop = min(lq, start + rows)
        part = None
        if mask is not None:
            part = mask if mask.shape[-2] == 1 else mask[..., start:stop, :]
        rows_q = query[..., start:stop, :]
        out[..., start:stop, :] = F.scaled_dot_product_attention(rows_q, key, value, attn_mask=part)
    return out


def _score_bytes(query: torch.Tensor, key: torch.Tensor) -> int:
    # the math kernel keeps fp32 scores (and their softmax) whatever the input dtype
    return query.shape[:-1].numel() * key.shape[-2] * 4


def _fused_kernel_applies(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> bool:
    """Whether a CUDA flash / memory-efficient kernel accepts these inputs (torch's own checks)."""
    if query.device.type != "cuda":
        return False
    from torch.backends import cuda

    try:
        params = cuda.SDPAParams(query, key, value, mask, 0.0, False, False)
    except TypeError:  # torch < 2.5: no enable_gqa argument
        params = cuda.SDPAParams(query, key, value, mask, 0.0, False)
    # the backend switches count too: with both disabled (sdpa_kernel(MATH)) SDPA falls to math
    flash = cuda.flash_sdp_enabled() and cuda.can_use_flash_attention(params)
    return flash or (cuda.mem_efficient_sdp_enabled() and cuda.can_use_efficient_attention(params))
