"""``compile=regional``: per-block torch.compile, zero graph breaks, same output as eager;
``compile=auto``: when it compiles."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from ruyi.compile import CompileAuto, NoCompile, RegionalCompile, repeated_blocks
from ruyi.errors import ConfigError
from ruyi.models.attention import SDPAAttention
from ruyi.precision import fp8_compute
from ruyi.registry import ATTENTIONS, COMPILES
from tests.tiny_models import block_inputs, forward_inputs, pretend_hopper, tiny_transformer, validate

REPO = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_the_tiny_transformer_compiles_whole_blocks_and_matches_eager():
    """fullgraph (any graph break fails), CPU float32; aot_eager traces exactly what inductor
    gets, without its code generation (the next test runs inductor on one block)."""
    model = tiny_transformer()
    args, kwargs = forward_inputs(model, frames=2, height=8, width=8)
    with torch.no_grad():
        expected = model(*args, **kwargs)
        torch._dynamo.reset()
        strategy = RegionalCompile(fullgraph=True, backend="aot_eager")
        strategy.apply(SimpleNamespace(transformer=model, execution_device=torch.device("cpu")))
        got = model(*args, **kwargs)
        assert all(block._compiled_call_impl is not None for block in model.blocks)
        strategy.remove(SimpleNamespace(transformer=model))
        again = model(*args, **kwargs)
    assert rel_l2(got, expected) < 1e-5
    assert all(block._compiled_call_impl is None for block in model.blocks)
    assert torch.equal(again, expected)


def test_inductor_compiles_a_block_that_matches_eager():
    model = tiny_transformer()
    x, kwargs = block_inputs(model, frames=2)
    block = model.blocks[-1]  # with a long-skip input
    with torch.no_grad():
        expected = block(x, **kwargs)
        torch._dynamo.reset()
        strategy = RegionalCompile(fullgraph=True)
        strategy.compile_module(block)
        got = block(x, **kwargs)
        strategy.restore()
    assert rel_l2(got, expected) < 1e-5


def test_recompiles_once_when_the_shape_first_changes():
    """dynamic=None: static graphs for the first shape, dynamic ones after the first change
    (the table in ruyi/compile.py); 2 graphs per compile (blocks with / without long skip)."""
    model = tiny_transformer()
    counter = CompileCounterWithBackend("eager")
    torch._dynamo.reset()
    strategy = RegionalCompile(backend=counter)
    strategy.compile_blocks(model, device=torch.device("cpu"))
    compiled = []
    with torch.no_grad():
        for frames, side in ((2, 8), (4, 8), (2, 16), (6, 12)):
            args, kwargs = forward_inputs(model, frames=frames, height=side, width=side)
            before = counter.frame_count
            model(*args, **kwargs)
            compiled.append(counter.frame_count - before)
    strategy.restore()
    assert compiled == [2, 2, 0, 0]


def test_repeated_blocks_follow_the_model_declaration():
    model = tiny_transformer()
    assert repeated_blocks(model) == list(model.blocks)
    model._repeated_blocks = ["FP32LayerNorm"]  # the diffusers convention: class names
    assert repeated_blocks(model) and all(type(m).__name__ == "FP32LayerNorm" for m in repeated_blocks(model))
    with pytest.raises(ConfigError, match="declares no repeated blocks"):
        repeated_blocks(torch.nn.Linear(2, 2))


def test_options_are_checked_when_built():
    with pytest.raises(ConfigError, match="compile.mode='fast'"):
        RegionalCompile(mode="fast")
    with pytest.raises(ConfigError, match="compile.dynamic"):
        RegionalCompile(dynamic="yes")
    assert COMPILES.get("none") is NoCompile and not NoCompile.compiles and RegionalCompile.compiles
    plan = validate(
        device="cpu", strategies={"compile": ("regional", {"mode": "max-autotune-no-cudagraphs"})}
    )
    assert plan.has("compiles") and plan.strategies[0].mode == "max-autotune-no-cudagraphs"
    with pytest.raises(ConfigError, match="compile.mode='fast'"):
        validate(device="cpu", strategies={"compile": ("regional", {"mode": "fast"})})


def test_fullgraph_refuses_offload_inside_block_forwards(monkeypatch):
    pretend_hopper(monkeypatch)
    with pytest.raises(
        ConfigError, match="compile.fullgraph=true cannot trace blocks whose weights offload=group"
    ):
        validate(device="cuda", offload="group", strategies={"compile": ("regional", {"fullgraph": True})})
    validate(device="cuda", offload="group", strategies={"compile": "regional"})


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_modes_are_refused_on_cuda(monkeypatch, mode):
    """Measured on an H200: the shared block graph's replay overwrote outputs the long skips read."""
    validate(device="cpu", strategies={"compile": ("regional", {"mode": mode})})  # no CUDA graphs there
    pretend_hopper(monkeypatch)
    with pytest.raises(
        ConfigError, match=f"compile.mode={mode} records CUDA graphs.*max-autotune-no-cudagraphs"
    ):
        validate(device="cuda", strategies={"compile": ("regional", {"mode": mode})})
    validate(device="cuda", strategies={"compile": ("regional", {"mode": "max-autotune-no-cudagraphs"})})


@pytest.mark.gpu
@no_cuda
@pytest.mark.parametrize(
    "attention, pad, mode",
    [("sdpa", 0, None), ("fa3", 96, None)],
)
def test_cuda_compile_matches_eager_bf16(attention, pad, mode):
    """bf16 on CUDA with compile (+ attention choice, padding): <= 1e-2 rel. L2 vs eager bf16 SDPA."""
    model = tiny_transformer(head_dim=88, device="cuda", dtype=torch.bfloat16)
    args, kwargs = forward_inputs(model, frames=2, height=16, width=16, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        reference = SDPAAttention()
        reference.attach(model)
        expected = model(*args, **kwargs)
        reference.detach()
        backend = ATTENTIONS.get(attention)(pad_head_dim=pad)
        backend.attach(model, device=torch.device("cuda"))
        torch._dynamo.reset()
        strategy = RegionalCompile(mode=mode, fullgraph=True)
        strategy.compile_blocks(model, device=torch.device("cuda"))
        got = model(*args, **kwargs)
        strategy.restore()
        backend.detach()
    assert rel_l2(got, expected) <= 1e-2


def _auto(monkeypatch, *, frames, side, steps=25, **options):
    """compile=auto's decision for a CUDA plan (an sm90 GPU with Triton, as far as checks can tell)."""
    import importlib.util

    pretend_hopper(monkeypatch)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "triton" else real_find_spec(name, *a),
    )
    settings = {"frames": frames, "video_size": [side, side], "steps": steps}
    plan = validate(device="cuda", **options, strategies={"compile": ("auto", settings)})
    (strategy,) = [s for s in plan.strategies if isinstance(s, CompileAuto)]
    return plan, strategy


@pytest.mark.parametrize(
    "frames, side, steps, compiled",
    [
        (24, 512, 25, False),
        (120, 512, 25, True),
        (48, 768, 25, True),
        (120, 768, 25, True),
        (120, 768, 2, False),
    ],
)
def test_auto_compiles_on_cuda_where_the_saving_beats_the_warm_up(monkeypatch, frames, side, steps, compiled):
    """6 144 tokens x 25 steps save ~6 s for ~20 s of compiling; 27 648 tokens save ~28 s."""
    plan, strategy = _auto(monkeypatch, frames=frames, side=side, steps=steps)
    assert strategy.tokens == frames // 4 * (side // 16) ** 2
    assert strategy.enabled is compiled and plan.has("compiles") is compiled
    assert ("saves ~" if compiled else "would save only ~") in strategy.reason


def test_auto_counts_tokens_with_the_presets_patch_size(monkeypatch):
    """The shipped tiny default has patch size 1: 8 x 8 tokens per latent frame at 64 x 64, not 4 x 4."""
    from ruyi.components import ModelSource

    plan, strategy = _auto(monkeypatch, frames=8, side=64)
    assert strategy.tokens == 2 * 4 * 4  # this plan's preset: the real model's 2 x 2 patches
    arch = {**(plan.spec.model.arch or {}), "transformer_arch": {"patch_size": 1}}
    spec = dataclasses.replace(plan.spec, model=ModelSource(path=None, arch=arch))
    strategy.resolve(dataclasses.replace(plan, spec=spec))
    assert strategy.patch_size == 1 and strategy.tokens == 2 * 8 * 8 and not strategy.enabled


def test_auto_compiles_for_fp8_compute_even_when_small(monkeypatch):
    monkeypatch.setattr(fp8_compute, "torchao_installed", lambda: True)
    _plan, strategy = _auto(monkeypatch, frames=24, side=512, precision="fp8_compute", dtype="bf16")
    assert strategy.enabled and "needs it" in strategy.reason  # and fp8_compute's own check passed


@pytest.mark.parametrize("offload, compiled", [("group", False), ("sequential", False), ("model", True)])
def test_auto_stays_eager_when_offload_moves_block_weights(monkeypatch, offload, compiled):
    _plan, strategy = _auto(monkeypatch, frames=120, side=768, offload=offload)
    assert strategy.enabled is compiled
    if not compiled:
        assert f"offload={offload} moves weights" in strategy.reason


def test_auto_is_eager_on_the_cpu_and_attaches_nothing():
    plan = validate(device="cpu", strategies={"compile": ("auto", {"frames": 120, "base_resolution": 768})})
    (strategy,) = [s for s in plan.strategies if isinstance(s, CompileAuto)]
    assert not strategy.enabled and not plan.has("compiles") and "device cpu" in strategy.reason
    model = tiny_transformer()
    strategy.apply(type("Pipe", (), {"transformer": model, "execution_device": torch.device("cpu")})())
    assert all(block._compiled_call_impl is None for block in model.blocks)


def test_infer_default_is_auto_and_benchmarks_stay_eager():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        infer = compose("infer", overrides=["frames=120", "video_size=[768,768]", "steps=25"])
        bench = compose("benchmark")
    assert infer.compile._target_ == "ruyi.compile.CompileAuto"
    assert (infer.compile.frames, list(infer.compile.video_size), infer.compile.steps) == (
        120,
        [768, 768],
        25,
    )
    assert bench.compile._target_ == "ruyi.compile.NoCompile"
