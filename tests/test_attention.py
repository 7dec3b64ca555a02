"""The attention dispatch and its memory-bounded fallback."""

from __future__ import annotations

import pytest
import torch

from ruyi.models import attention as dispatch
from ruyi.models.attention import attention, chunked_attention

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def naive(q, k, v, mask=None):
    """softmax(q kᵀ / sqrt(d)) v in float64, mask True = attend."""
    scores = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.double()).to(q.dtype)


def _qkv(lq=37, lk=23, d=8, dv=None, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, width, generator=g) for n, width in ((lq, d), (lk, d), (lk, dv or d)))
    return tuple(t.to(device, dtype) for t in (q, k, v))


def _key_padding(k, keep=15):
    mask = torch.ones(2, 1, 1, k.shape[-2], dtype=torch.bool, device=k.device)
    mask[0, ..., keep:] = False
    return mask


def test_dispatch_equals_the_naive_formula():
    q, k, v = _qkv(dv=5)
    assert torch.allclose(attention(q, k, v), naive(q, k, v), atol=1e-5)


def test_key_padding_mask_bool_and_additive():
    q, k, v = _qkv()
    mask = _key_padding(k)
    expected = naive(q, k, v, mask)
    assert torch.allclose(attention(q, k, v, mask=mask), expected, atol=1e-5)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    assert torch.allclose(attention(q, k, v, mask=additive), expected, atol=1e-5)
    # padded keys carry no weight: changing them changes nothing for the masked batch row
    v2 = v.clone()
    v2[0, :, 15:] += 100
    assert torch.allclose(attention(q, k, v2, mask=mask)[0], expected[0], atol=1e-5)


def test_chunked_fallback_equals_the_fast_path():
    q, k, v = _qkv(lq=101)
    mask = torch.rand(2, 3, 101, k.shape[-2], generator=torch.Generator().manual_seed(1)) > 0.2
    mask[..., 0] = True
    fast = attention(q, k, v, mask=mask)
    assert torch.allclose(fast, naive(q, k, v, mask), atol=1e-5)
    # a budget of 7 query rows' scores forces 15 chunks, the last one partial
    slow = chunked_attention(q, k, v, mask=mask, max_score_bytes=2 * 3 * 23 * 4 * 7)
    assert torch.allclose(slow, fast, atol=1e-6)
    for m in (None, _key_padding(k)):  # masks broadcasting over the query axis, and no mask
        forced = attention(q, k, v, mask=m, max_score_bytes=1)
        assert torch.allclose(forced, attention(q, k, v, mask=m), atol=1e-6)


def test_dispatch_falls_back_only_over_budget(monkeypatch):
    calls, original = [], dispatch.chunked_attention

    def spy(*args, **kwargs):
        calls.append(kwargs["max_score_bytes"])
        return original(*args, **kwargs)

    monkeypatch.setattr(dispatch, "chunked_attention", spy)
    q, k, v = _qkv()
    dispatch.attention(q, k, v)
    assert calls == []
    out = dispatch.attention(q, k, v, max_score_bytes=64)
    assert calls == [64] and torch.allclose(out, naive(q, k, v), atol=1e-5)


@pytest.mark.gpu
@no_cuda
def test_cuda_fused_kernels_are_used_and_match_the_fallback():
    q, k, v = _qkv(lq=300, lk=300, d=64, device="cuda", dtype=torch.bfloat16)
    if torch.cuda.get_device_capability()[0] >= 8:
        assert dispatch._fused_kernel_applies(q, k, v, None)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        assert not dispatch._fused_kernel_applies(q, k, v, None)
    fused = attention(q, k, v, max_score_bytes=1)
    chunked = chunked_attention(q, k, v, max_score_bytes=4 * 2 * 3 * 300 * 16)
    expected = naive(q.float(), k.float(), v.float())
    assert torch.allclose(fused.float(), expected, atol=2e-2)
    assert torch.allclose(chunked.float(), expected, atol=2e-2)
