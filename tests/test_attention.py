"""The attention dispatch, its backends, head-dim padding and the memory-bounded fallback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ruyi.errors import AcceleratorRequired, ConfigError
from ruyi.models.attention import (
    AttentionBackend,
    AutoAttention,
    ChunkedAttention,
    DevicePlan,
    FlashAttention3,
    MathAttention,
    SDPAAttention,
    attention,
    chunked_attention,
    set_attention_backend,
)
from ruyi.models.attention import auto as auto_module
from ruyi.models.attention import fa3 as fa3_module
from ruyi.registry import ATTENTIONS
from tests.tiny_models import block_inputs, forward_inputs, pretend_hopper, tiny_transformer, validate

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU_BACKENDS = ("auto", "sdpa", "math", "chunked")


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


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_dispatch_equals_the_naive_formula():
    q, k, v = _qkv(dv=5)
    assert torch.allclose(attention(q, k, v), naive(q, k, v), atol=1e-5)


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_every_cpu_backend_equals_the_naive_formula(name):
    q, k, v = _qkv()
    backend = ATTENTIONS.get(name)()
    assert torch.allclose(attention(q, k, v, backend=backend), naive(q, k, v), atol=1e-5)


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
        forced = attention(q, k, v, mask=m, backend=ChunkedAttention(max_score_bytes=1))
        assert torch.allclose(forced, attention(q, k, v, mask=m), atol=1e-6)


@pytest.mark.parametrize("multiple", [96, 128, 24])
@pytest.mark.parametrize("name", ["sdpa", "math", "chunked", "auto"])
def test_head_dim_padding_gives_the_same_output(name, multiple):
    """88 -> 96 / 128 / 96 (multiple of 24) with zeros; the scale stays 1/sqrt(88)."""
    q, k, v = _qkv(lq=40, lk=40, d=88)
    backend = ATTENTIONS.get(name)(pad_head_dim=multiple)
    padded = attention(q, k, v, backend=backend)
    assert padded.shape == v.shape[:2] + (40, 88)
    assert torch.allclose(padded, naive(q, k, v), atol=1e-5)
    assert torch.allclose(padded, attention(q, k, v, backend=ATTENTIONS.get(name)()), atol=1e-6)


def test_padding_keeps_a_narrower_value_head():
    q, k, v = _qkv(lq=9, lk=9, d=88, dv=40)
    out = attention(q, k, v, backend=SDPAAttention(pad_head_dim=96))
    assert out.shape[-1] == 40 and torch.allclose(out, naive(q, k, v), atol=1e-5)


def _spies(monkeypatch):
    calls: list[str] = []
    original = auto_module.chunked_attention

    def chunked(*args, **kwargs):
        calls.append("chunked")
        return original(*args, **kwargs)

    def cudnn(query, key, value, *, mask, scale, self_attention):
        calls.append("cudnn")
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, scale=scale)

    monkeypatch.setattr(auto_module, "chunked_attention", chunked)
    monkeypatch.setattr(auto_module.CUDNN_FIRST, "compute", cudnn)
    return calls


def test_auto_on_cpu_slices_only_over_budget(monkeypatch):
    calls = _spies(monkeypatch)
    q, k, v = _qkv()
    attention(q, k, v, backend=AutoAttention())
    assert calls == []
    out = attention(q, k, v, backend=AutoAttention(max_score_bytes=64))
    assert calls == ["chunked"] and torch.allclose(out, naive(q, k, v), atol=1e-5)


def test_auto_sends_large_calls_to_cudnn_when_only_cudnn_is_enabled(monkeypatch):
    """A defect found on an H200: a cuDNN-only setup must not be cut into slices."""
    calls = _spies(monkeypatch)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.backends.cuda, "flash_sdp_enabled", lambda: False)
    monkeypatch.setattr(torch.backends.cuda, "mem_efficient_sdp_enabled", lambda: False)
    monkeypatch.setattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    backend = AutoAttention(max_score_bytes=64, use_fa3=False)
    plan = backend._decide(torch.device("cuda", 0))
    assert plan.cudnn and torch.bfloat16 in plan.fused and torch.float32 not in plan.fused
    # the same decision, installed for the CPU so that the call can run here
    backend._plans[("cpu", None)] = plan
    q, k, v = _qkv(dtype=torch.bfloat16)
    attention(q, k, v, backend=backend)
    assert calls == ["cudnn"]
    attention(*_qkv(), backend=backend)  # float32: no fused kernel enabled covers it -> slices
    assert calls == ["cudnn", "chunked"]


def test_auto_decides_once_per_device(monkeypatch):
    backend = AutoAttention()
    decided = []
    original = backend._decide
    monkeypatch.setattr(backend, "_decide", lambda device: decided.append(device) or original(device))
    for _ in range(3):
        attention(*_qkv(), backend=backend)
    assert len(decided) == 1 and backend.plan(torch.device("cpu")) == DevicePlan(
        label=backend.plan(torch.device("cpu")).label
    )


def test_fa3_serves_only_inference_bf16_self_attention_without_mask():
    fa3 = FlashAttention3()
    q, k, v = _qkv(lq=16, lk=16, d=88, dtype=torch.bfloat16)
    assert fa3.serves(q, k, v, None, True)
    assert not fa3.serves(q, k, v, None, False)  # cross-attention
    assert not fa3.serves(q, k, v, _key_padding(k), True)
    assert not fa3.serves(*(t.float() for t in (q, k, v)), None, True)
    with torch.enable_grad():
        assert not fa3.serves(q.requires_grad_(), k, v, None, True)


def test_fa3_falls_back_to_sdpa_where_it_does_not_run():
    q, k, v = _qkv()
    assert not FlashAttention3().available(torch.device("cpu"))
    out = attention(q, k, v, backend=FlashAttention3(), self_attention=True)
    assert torch.allclose(out, naive(q, k, v), atol=1e-5)


FA3_CALLS: list[tuple[int, ...]] = []


@torch.library.custom_op("ruyi_test::fa3_like", mutates_args=())
def fa3_like(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float) -> list[torch.Tensor]:
    """The wheel's contract on the CPU: (B, L, heads, D) in, (output, log-sum-exp) out."""
    FA3_CALLS.append(tuple(q.shape))
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale
    )
    return [
        out.transpose(1, 2).contiguous(),
        q.new_zeros(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32),
    ]


@fa3_like.register_fake
def _(q, k, v, softmax_scale):
    return [
        q.new_empty(*q.shape[:-1], v.shape[-1]),
        q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32),
    ]


def cpu_fa3(pad_head_dim: int = 0) -> FlashAttention3:
    """FA3 with the kernel above installed for the CPU, as ``available`` would for an sm90 GPU."""
    backend = FlashAttention3(pad_head_dim=pad_head_dim)
    backend._forward[("cpu", None)] = torch.ops.ruyi_test.fa3_like.default
    return backend


def test_fa3_glue_hands_the_kernel_its_layout_and_scale():
    FA3_CALLS.clear()
    q, k, v = _qkv(lq=24, lk=24, d=88, dtype=torch.bfloat16)
    out = attention(q, k, v, backend=cpu_fa3(pad_head_dim=96), self_attention=True)
    assert FA3_CALLS == [(2, 24, 3, 96)]  # (B, L, heads, padded D)
    assert rel_l2(out, naive(q.float(), k.float(), v.float())) < 1e-2
    attention(q, k, v, backend=cpu_fa3(), self_attention=False)  # cross-attention: SDPA
    assert len(FA3_CALLS) == 1


def test_a_block_with_fa3_traces_without_graph_breaks():
    FA3_CALLS.clear()
    model = tiny_transformer(head_dim=88, dtype=torch.bfloat16)
    x, kwargs = block_inputs(model, frames=2)
    set_attention_backend(model, cpu_fa3(pad_head_dim=96))
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model.blocks[-1])(x, **kwargs)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert FA3_CALLS  # the self-attention went through the kernel


def test_checks_fail_before_any_weight_loads():
    for name in ("cudnn", "flash", "efficient", "fa3"):
        with pytest.raises(AcceleratorRequired, match=f"attention={name} runs only on a CUDA GPU"):
            validate(device="cpu", strategies={"attention": name})
    for name in CPU_BACKENDS:
        plan = validate(device="cpu", strategies={"attention": (name, {"pad_head_dim": 96})})
        assert [type(s) for s in plan.strategies] == [ATTENTIONS.get(name)]
    with pytest.raises(ConfigError, match="pad_head_dim=-1"):
        validate(device="cpu", strategies={"attention": ("sdpa", {"pad_head_dim": -1})})
    with pytest.raises(ConfigError, match="max_score_bytes=0"):
        ChunkedAttention(max_score_bytes=0)


def test_cuda_kernels_check_the_dtype(monkeypatch):
    pretend_hopper(monkeypatch)
    with pytest.raises(ConfigError, match="needs dtype bfloat16 or float16"):
        validate(device="cuda", dtype="float32", strategies={"attention": "flash"})
    with pytest.raises(ConfigError, match="bfloat16 only"):
        validate(device="cuda", dtype="float16", strategies={"attention": "fa3"})


@pytest.mark.skipif(
    fa3_module.load_forward() is not None, reason="the FlashAttention-3 wheel is installed here"
)
def test_fa3_without_the_wheel_names_the_extra(monkeypatch):
    pretend_hopper(monkeypatch)
    with pytest.raises(ConfigError, match=r"pip install 'ruyi\[hopper\]'"):
        validate(device="cuda", dtype="bf16", strategies={"attention": "fa3"})


class Recorder(AttentionBackend):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, bool]] = []

    def compute(self, query, key, value, *, mask, scale, self_attention):
        self.calls.append((query.shape[-2], key.shape[-2], self_attention))
        return MathAttention().compute(
            query, key, value, mask=mask, scale=scale, self_attention=self_attention
        )


def test_a_backend_attaches_to_every_processor_and_detaches():
    model = tiny_transformer()
    x, kwargs = block_inputs(model, frames=2)
    recorder = Recorder()
    pipe = SimpleNamespace(transformer=model, execution_device=torch.device("cpu"))
    recorder.apply(pipe)
    with torch.no_grad():
        model.blocks[0](x, **kwargs)
    tokens = x.shape[1]
    # self-attention, text cross-attention (8 + 12 tokens), CLIP cross-attention (4 queries)
    assert recorder.calls == [(tokens, tokens, True), (tokens, 20, False), (tokens, 4, False)]
    processors = [
        m.processor for m in model.modules() if hasattr(getattr(m, "processor", None), "attention_backend")
    ]
    assert len(processors) == 3 * len(model.blocks)
    assert all(p.attention_backend is recorder for p in processors)
    recorder.remove(pipe)
    assert all(p.attention_backend is None for p in processors)
    assert set_attention_backend(model, None) and all(p.attention_backend is None for p in processors)


@pytest.mark.parametrize("name", ["auto", "sdpa", "math", "chunked"])
def test_a_block_traces_without_graph_breaks(name):
    """Per backend on CPU (padding included): what `compile=regional` relies on."""
    model = tiny_transformer(head_dim=88)
    x, kwargs = block_inputs(model, frames=2)
    options = {"max_score_bytes": 4096} if name == "chunked" else {}
    set_attention_backend(model, ATTENTIONS.get(name)(pad_head_dim=96, **options))
    block = model.blocks[-1]  # a second-half block: long-skip input too
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(block)(x, **kwargs)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


# -- CUDA ------------------------------------------------------------------------------------------
GPU_BACKENDS = ["auto", "sdpa", "cudnn", "flash", "efficient", "fa3", "chunked"]


@pytest.mark.gpu
@no_cuda
@pytest.mark.parametrize("pad", [0, 96, 128])
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_cuda_backends_match_eager_bf16(name, pad):
    """bf16 forward of a small model with head dim 88 per backend vs torch's SDPA: <= 1e-2 rel. L2."""
    model = tiny_transformer(head_dim=88, device="cuda", dtype=torch.bfloat16)
    args, kwargs = forward_inputs(model, frames=2, height=16, width=16, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = run_with(SDPAAttention(), model, args, kwargs)
        got = run_with(ATTENTIONS.get(name)(pad_head_dim=pad), model, args, kwargs)
    assert rel_l2(got, expected) <= 1e-2


def run_with(backend: AttentionBackend, model, args, kwargs) -> torch.Tensor:
    backend.attach(model, device=torch.device("cuda"))
    try:
        return model(*args, **kwargs)
    finally:
        backend.detach()


@pytest.mark.gpu
@no_cuda
def test_cuda_block_traces_without_graph_breaks_once_prepared():
    from ruyi.models.attention import prepare_attention

    model = tiny_transformer(head_dim=88, device="cuda", dtype=torch.bfloat16)
    x, kwargs = block_inputs(model, frames=2)
    prepare_attention(model, torch.device("cuda"))
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model.blocks[-1])(x, **kwargs)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


@pytest.mark.gpu
@no_cuda
def test_cuda_auto_does_not_slice_when_only_cudnn_is_enabled(monkeypatch):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    calls: list[str] = []  # the real cuDNN kernel runs; only the slicing is replaced by a spy
    monkeypatch.setattr(auto_module, "chunked_attention", lambda *a, **k: calls.append("chunked"))
    q, k, v = _qkv(lq=300, lk=300, d=64, device="cuda", dtype=torch.bfloat16)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        backend = AutoAttention(max_score_bytes=1, use_fa3=False)
        out = attention(q, k, v, backend=backend)
    assert calls == [] and rel_l2(out, naive(q.float(), k.float(), v.float())) < 1e-2


def test_auto_pads_the_head_dim_only_for_the_kernels_where_it_was_measured_to_pay():
    from ruyi.errors import ConfigError

    q = k = v = torch.randn(1, 2, 5, 88)
    padded = {kernel: AutoAttention()._padded(kernel, q, k, v) for kernel in ("fa3", "cudnn")}
    assert padded["fa3"][0].shape[-1] == 96 and padded["cudnn"][0].shape[-1] == 96
    assert all(width == 88 for *_, width in padded.values())
    assert torch.equal(padded["fa3"][0][..., :88], q) and not padded["fa3"][0][..., 88:].any()
    assert AutoAttention(pad_head_dim=0)._padded("fa3", q, k, v)[0].shape[-1] == 88  # 0 = off
    assert AutoAttention()._padded("fa3", *(torch.randn(1, 2, 5, 64),) * 3)[0].shape[-1] == 64  # aligned already
    with pytest.raises(ConfigError, match="must be auto or an integer"):
        AutoAttention(pad_head_dim="fast")
