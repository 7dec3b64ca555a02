"""``precision=fp8_compute``: its checks run before any weight loads; which linears it converts."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

from benchmarks.speed_setup import full_arch, load_preset
from ruyi.compile import RegionalCompile
from ruyi.errors import AcceleratorRequired, ConfigError
from ruyi.models.attention import SDPAAttention
from ruyi.models.transformer import RuyiTransformer3D
from ruyi.precision import fp8_compute
from ruyi.precision.fp8_compute import FP8Compute
from ruyi.registry import PRECISIONS
from tests.tiny_models import forward_inputs, pretend_hopper, tiny_transformer, validate


def plan(**changes):
    """The real assembly's checks for fp8_compute with compile=regional on a CUDA bf16 pipeline."""
    options = {
        "device": "cuda",
        "dtype": "bf16",
        "precision": "fp8_compute",
        "strategies": {"compile": "regional"},
    }
    return validate(**{**options, **changes})


@pytest.fixture
def hopper(monkeypatch):
    pretend_hopper(monkeypatch)
    monkeypatch.setattr(fp8_compute, "torchao_installed", lambda: True)


def test_registered_with_its_yaml_name():
    assert PRECISIONS.get("fp8_compute") is FP8Compute and FP8Compute.needs_compile


def test_needs_a_cuda_gpu():
    with pytest.raises(AcceleratorRequired, match="needs a CUDA GPU of compute capability 8.9"):
        plan(device="cpu")


def test_needs_compute_capability_8_9(monkeypatch, hopper):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(AcceleratorRequired, match="has 8.0"):
        plan()


def test_needs_compile_and_bfloat16(hopper):
    for off in ({}, {"compile": "none"}, {"attention": "sdpa"}):
        with pytest.raises(ConfigError, match="needs compile=regional"):
            plan(strategies=off)
    with pytest.raises(ConfigError, match="set dtype=bfloat16"):
        plan(dtype="float16")
    assert isinstance(plan().precision, FP8Compute)


def test_names_the_extra_without_torchao(hopper, monkeypatch):
    monkeypatch.setattr(fp8_compute, "torchao_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'ruyi\[hopper\]'"):
        plan()


def test_bad_granularity_is_a_config_error():
    with pytest.raises(ConfigError, match="granularity='col'"):
        FP8Compute(granularity="col")


def test_selects_the_aligned_block_linears_of_the_real_model():
    arch = full_arch(RuyiTransformer3D, load_preset("ruyi_mini_7b")["transformer_arch"])
    with torch.device("meta"):
        model = RuyiTransformer3D(**{**arch, **RuyiTransformer3D.config_overrides})
    chosen = FP8Compute().select(model)
    expected_per_block = {
        "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
        "attn2.to_out.0", "attn_clip.to_q", "attn_clip.to_k", "attn_clip.to_v", "attn_clip.to_out.0",
        "ff.net.0.proj", "ff.net.2", "gate_clip.proj",
    }  # fmt: skip
    assert {n.split(".", 2)[2] for n in chosen if n.startswith("blocks.0.")} == expected_per_block
    skips = [n for n in chosen if n.endswith("skip_linear")]
    assert len(skips) == 19  # blocks 21..39 merge a long skip
    assert len(chosen) == 40 * len(expected_per_block) + 19
    assert not [n for n in chosen if "norm" in n or not n.startswith("blocks.")]


def test_skips_linears_whose_sides_are_not_multiples_of_16():
    model = tiny_transformer()  # hidden 32, feed-forward 139
    chosen = FP8Compute().select(model)
    assert "blocks.0.attn1.to_q" in chosen and "blocks.0.ff.net.2" not in chosen


def _stand_in_torchao(monkeypatch) -> list[dict]:
    """A fake ``torchao.quantization`` recording the config FP8Compute asks for, like torchao's
    own config that switches inductor's coordinate-descent tuning on when told to (its default)."""
    import sys
    import types

    made: list[dict] = []

    class Config:
        def __init__(self, *, granularity, set_inductor_config=True):
            made.append(
                {"granularity": type(granularity).__name__, "set_inductor_config": set_inductor_config}
            )
            self.set_inductor_config = set_inductor_config

    def quantize_(model, config, filter_fn):
        if config.set_inductor_config:
            torch._inductor.config.coordinate_descent_tuning = True

    module = types.ModuleType("torchao.quantization")
    module.Float8DynamicActivationFloat8WeightConfig = Config
    module.PerRow, module.PerTensor = type("PerRow", (), {}), type("PerTensor", (), {})
    module.quantize_ = quantize_
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", module)
    return made


def test_leaves_inductor_settings_of_the_process_alone(monkeypatch):
    """torchao's default turns on coordinate-descent tuning for every later compile in the process;
    on the 7B that made the first compiled call take ~520 s instead of ~29 s (H200, RESULTS.md)."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "coordinate_descent_tuning", False)
    made = _stand_in_torchao(monkeypatch)
    FP8Compute(granularity="tensor").convert(tiny_transformer(), torch.bfloat16)
    assert made == [{"granularity": "PerTensor", "set_inductor_config": False}]
    assert inductor.coordinate_descent_tuning is False


@pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="needs torchao (pip install 'ruyi[hopper]')"
)
def test_real_torchao_leaves_inductor_settings_alone(monkeypatch):
    """The same with the real torchao (its hardware check skipped: quantising runs on the CPU)."""
    import torch._inductor.config as inductor
    from torchao.quantization import quant_api

    monkeypatch.setattr(inductor, "coordinate_descent_tuning", False)
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda *a, **k: None)
    model = tiny_transformer(dtype=torch.bfloat16)
    assert FP8Compute().convert(model, torch.bfloat16) > 0
    assert type(model.blocks[0].attn1.to_q.weight).__name__ != "Parameter"  # a torchao float8 tensor
    assert inductor.coordinate_descent_tuning is False


def _fp8_ready() -> bool:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        return False
    try:
        importlib.import_module("torchao.quantization")
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not _fp8_ready(), reason="needs CUDA sm89+ and torchao")
def test_cuda_fp8_compute_stays_close_to_bf16():
    model = tiny_transformer(head_dim=88, device="cuda", dtype=torch.bfloat16)  # hidden 176, ff 768
    args, kwargs = forward_inputs(model, frames=2, height=16, width=16, device="cuda", dtype=torch.bfloat16)
    SDPAAttention().attach(model)  # the same attention kernel on both sides
    with torch.no_grad():
        expected = model(*args, **kwargs)
        converted = FP8Compute().convert(model, torch.bfloat16)
        torch._dynamo.reset()
        RegionalCompile().compile_blocks(model, device=torch.device("cuda"))
        got = model(*args, **kwargs)
    assert converted == 4 * 15 + 1  # blocks 3 (of 0..3) merges a long skip
    error = float((got.float() - expected.float()).norm() / expected.float().norm())
    print(f"fp8_compute vs bf16 relative L2: {error:.3g}")
    assert error < 0.1
