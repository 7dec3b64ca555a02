"""One attention entry point for every model, with a memory-bounded fallback.

Order: ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
where the GPU and dtype have them); if the score matrix of the math kernel would exceed
``max_score_bytes`` (a GPU without flash kernels, e.g. V100 with bf16), queries are processed in
chunks so memory stays bounded instead of trying a multi-GiB allocation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_MAX_SCORE_BYTES = 2 * 1024**3


def _has_fused_kernel(query: torch.Tensor) -> bool:
    """Whether SDPA will pick a kernel that never materialises the (Lq, Lk) scores."""
    if query.device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(query.device)
    # flash / mem-efficient cover fp16 & bf16 on sm80+; fp32 and older GPUs may fall to math
    return major >= 8 and query.dtype in (torch.float16, torch.bfloat16)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    max_score_bytes: int = DEFAULT_MAX_SCORE_BYTES,
) -> torch.Tensor:
    """Softmax attention. query (B, heads, Lq, D), key/value (B, heads, Lk, D) -> (B, heads, Lq, D).

    ``mask`` (broadcastable to (B, heads, Lq, Lk)): bool (True = attend) or additive float.
    """
    batch, heads, lq, _ = query.shape
    lk = key.shape[-2]
    score_bytes = batch * heads * lq * lk * 4
    if score_bytes <= max_score_bytes or _has_fused_kernel(query):
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
    """SDPA over slices of the queries, each with at most ``max_score_bytes`` of scores."""
    batch, heads, lq, _ = query.shape
    lk = key.shape[-2]
    rows = max(1, max_score_bytes // max(1, batch * heads * lk * 4))
    out = torch.empty_like(query[..., : value.shape[-1]])
    for start in range(0, lq, rows):
        stop = min(lq, start + rows)
        part_mask = None
        if mask is not None:
            part_mask = mask if mask.shape[-2] == 1 else mask[..., start:stop, :]
        out[..., start:stop, :] = F.scaled_dot_product_attention(
            query[..., start:stop, :], key, value, attn_mask=part_mask
        )
    return out
