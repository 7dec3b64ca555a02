"""The attention dispatch and its memory-bounded fallback."""

from __future__ import annotations

import torch

from ruyi.models.attention import attention, chunked_attention


def naive(q, k, v, mask=None):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def _qkv(lq=37, lk=23, d=8):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 3, n, d, generator=g) for n in (lq, lk, lk))


def test_dispatch_equals_the_naive_formula():
    q, k, v = _qkv()
    assert torch.allclose(attention(q, k, v), naive(q, k, v), atol=1e-5)


def test_key_padding_mask():
    q, k, v = _qkv()
    mask = torch.ones(2, 1, 1, k.shape[-2], dtype=torch.bool)
    mask[0, ..., 15:] = False
    assert torch.allclose(attention(q, k, v, mask=mask), naive(q, k, v, mask), atol=1e-5)


def test_chunked_fallback_equals_the_fast_path():
    q, k, v = _qkv(lq=101)
    mask = torch.rand(2, 3, 101, k.shape[-2], generator=torch.Generator().manual_seed(1)) > 0.2
    mask[..., 0] = True
    fast = attention(q, k, v, mask=mask)
    # a tiny budget forces many query chunks
    slow = chunked_attention(q, k, v, mask=mask, max_score_bytes=2 * 3 * 23 * 4 * 7)
    assert torch.allclose(slow, fast, atol=1e-6)
    forced = attention(q, k, v, mask=mask, max_score_bytes=1)
    assert torch.allclose(forced, fast, atol=1e-6)
