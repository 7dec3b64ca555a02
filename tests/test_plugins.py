"""Plugins on the tiny model: LoRA merge/unmerge, TeaCache, Enhance-A-Video, their configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import save_file

from ruyi.assembly import PipelineSpec, load_pipeline
from ruyi.errors import RuyiUserError
from ruyi.io import procedural_image
from ruyi.plugins import EnhanceAVideo, LoRAWeights, TeaCache, enhance_factor

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KW = dict(frames=8, video_size=[64, 64], steps=5, seed=3, progress=False)
TARGETS = ("blocks.0.attn1.to_q", "blocks.1.ff.net.2", "blocks.2.attn2.to_out.0")


@pytest.fixture(scope="module")
def pipe(fixture_dir):
    return load_pipeline(fixture_dir)


@pytest.fixture(scope="module")
def image():
    return procedural_image(64, 64)


@pytest.fixture(scope="module")
def plain(pipe, image):
    return pipe(image, **KW)


# PNDM evaluates the model 13 times for 4 steps (4 for each of its 3 warm-up steps, then 1); the
# original's plugin counters count those calls, which the expectations below are worked out from.
PNDM_KW = dict(frames=8, video_size=[64, 64], steps=4, seed=3, progress=False, output_latents=True)


@pytest.fixture(scope="module")
def pndm_pipe(fixture_dir):
    return load_pipeline(fixture_dir, sampler="pndm")


class CallIndex:
    """The model call the loop is at, for hooks that run inside the transformer."""

    call: int | None = None

    def on_step_begin(self, state) -> None:
        self.call = state.call


def _factors(pipe, rank=2, seed=0):
    """{module path: (down (rank, in), up (out, rank))} with effects large enough to see."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(pipe.transformer.named_modules())
    out = {}
    for name in TARGETS:
        w = modules[name].weight
        out[name] = (torch.randn(rank, w.shape[1], generator=g) * 0.3, torch.randn(w.shape[0], rank, generator=g) * 0.3)
    return out


def _kohya_file(path, factors, alpha):
    tensors = {}
    for name, (down, up) in factors.items():
        key = "lora_unet_" + name.replace(".", "_")
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(alpha)}
    save_file(tensors, str(path))
    return path


def _peft_file(path, factors):
    tensors = {}
    for name, (down, up) in factors.items():
        tensors |= {f"transformer.{name}.lora_A.weight": down, f"transformer.{name}.lora_B.weight": up}
    save_file(tensors, str(path))
    return path


def hook_names(pipe) -> set[str]:
    """Every diffusers hook name registered anywhere in the transformer."""
    registries = (getattr(m, "_diffusers_hook", None) for m in pipe.transformer.modules())
    return {name for registry in registries if registry is not None for name in registry.hooks}


def _weights(pipe):
    return {k: v.clone() for k, v in pipe.transformer.state_dict().items()}


@pytest.fixture()
def restore(pipe):
    """Puts the exact weights back: an unmerge leaves fp32 rounding that would break later equality tests."""
    before = _weights(pipe)
    yield
    pipe.transformer.load_state_dict(before)


# -- LoRA ------------------------------------------------------------------------------------
def test_lora_merge_unmerge_round_trip_and_effect(pipe, image, plain, tmp_path, restore):
    factors = _factors(pipe)
    lora = LoRAWeights(path=_kohya_file(tmp_path / "k.safetensors", factors, alpha=1.0), strength=1.2)
    before = _weights(pipe)
    lora.apply(pipe)
    try:
        after = pipe.transformer.state_dict()
        for name, (down, up) in factors.items():  # alpha / rank = 0.5
            expected = before[f"{name}.weight"] + 1.2 * 0.5 * (up @ down)
            torch.testing.assert_close(after[f"{name}.weight"], expected, rtol=0, atol=1e-6)
        untouched = [k for k in before if not any(k.startswith(n + ".") for n in TARGETS)]
        assert all(torch.equal(before[k], after[k]) for k in untouched)
        assert not torch.allclose(pipe(image, **KW), plain, atol=1e-3)
    finally:
        lora.remove(pipe)
    for key, value in pipe.transformer.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-6)
    torch.testing.assert_close(pipe(image, **KW), plain, rtol=0, atol=1e-4)  # fp32 rounding of W + d - d


def test_peft_lora_equals_a_manually_merged_weight(pipe, image, tmp_path, restore):
    factors = _factors(pipe, seed=1)
    lora = LoRAWeights(path=_peft_file(tmp_path / "p.safetensors", factors), strength=0.7)
    before = _weights(pipe)
    lora.apply(pipe)
    with_lora = pipe(image, **KW)
    lora.remove(pipe)
    modules = dict(pipe.transformer.named_modules())
    with torch.no_grad():
        for name, (down, up) in factors.items():
            modules[name].weight.copy_(before[f"{name}.weight"] + 0.7 * (up @ down))
    assert torch.equal(pipe(image, **KW), with_lora)


def test_several_loras_stack_and_unmerge_in_any_order(pipe, tmp_path, restore):
    a, b = _factors(pipe, seed=2), _factors(pipe, seed=3)
    la = LoRAWeights(path=_kohya_file(tmp_path / "a.safetensors", a, alpha=2.0), strength=1.0)
    lb = LoRAWeights(path=_peft_file(tmp_path / "b.safetensors", b), strength=-0.5)
    before = _weights(pipe)
    la.apply(pipe), lb.apply(pipe)
    name = TARGETS[0]
    merged = pipe.transformer.state_dict()[f"{name}.weight"]
    expected = before[f"{name}.weight"] + a[name][1] @ a[name][0] - 0.5 * b[name][1] @ b[name][0]
    torch.testing.assert_close(merged, expected, rtol=0, atol=1e-5)
    la.remove(pipe), lb.remove(pipe)
    for key, value in pipe.transformer.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-6)


def test_lora_keys_that_match_nothing_are_an_error(pipe, tmp_path):
    down, up = torch.ones(2, 8), torch.ones(8, 2)
    save_file({"lora_unet_no_such_layer.lora_down.weight": down, "lora_unet_no_such_layer.lora_up.weight": up},
              str(tmp_path / "x.safetensors"))  # fmt: skip
    before = _weights(pipe)
    with pytest.raises(ValueError, match="1 of 1 LoRA layers match no transformer weight"):
        LoRAWeights(path=tmp_path / "x.safetensors").apply(pipe)
    save_file({"model.diffusion_model.foo": down}, str(tmp_path / "y.safetensors"))
    with pytest.raises(ValueError, match="neither the lora_down/lora_up nor the lora_A/lora_B"):
        LoRAWeights(path=tmp_path / "y.safetensors").apply(pipe)
    assert all(torch.equal(v, before[k]) for k, v in pipe.transformer.state_dict().items())


# -- TeaCache --------------------------------------------------------------------------------
def test_teacache_threshold_zero_equals_the_plain_run(pipe, image, plain):
    cache = TeaCache(threshold=0.0)
    cache.apply(pipe)
    try:
        assert torch.equal(pipe(image, **KW), plain)
    finally:
        cache.remove(pipe)
    assert cache.skipped_steps == 0 and not hook_names(pipe) and not pipe.callbacks


@pytest.mark.parametrize(("start", "end", "skipped"), [(1, 1, [1, 2, 3]), (2, 1, [2, 3]), (1, 3, [1])])
def test_teacache_large_threshold_skips_the_predicted_steps(pipe, image, plain, start, end, skipped):
    cache = TeaCache(threshold=1e9, skip_start_steps=start, skip_end_steps=end, offload_cpu=True)
    blocks = pipe.transformer.blocks
    calls = {i: [] for i in range(len(blocks))}
    handles = [blocks[i].ff.register_forward_hook(lambda *_, i=i: calls[i].append(1)) for i in calls]
    cache.apply(pipe)
    try:
        video = pipe(image, **KW)
    finally:
        cache.remove(pipe)
        for handle in handles:
            handle.remove()
    assert cache.skipped == skipped and cache.skipped_steps == len(skipped)
    # the first block runs every call (its attn1 input is the statistic); the others really did not
    assert len(calls[0]) == KW["steps"]
    assert all(len(calls[i]) == KW["steps"] - len(skipped) for i in range(1, len(blocks)))
    assert torch.isfinite(video).all() and not torch.equal(video, plain)


@pytest.mark.parametrize(("start", "end", "skipped"), [(1, 1, [1, 2, 5, 6, 9, 10]), (2, 1, [2, 6, 10])])
def test_teacache_window_counts_model_calls_like_the_original(pndm_pipe, image, start, end, skipped):
    """The original's counter starts over every 4 (= steps) calls: windows 0-3, 4-7, 8-11, 12.
    In each, position start - 1 seeds the cache and positions start..4 - end - 1 may reuse it."""
    cache = TeaCache(threshold=1e9, skip_start_steps=start, skip_end_steps=end)
    calls = []
    handle = pndm_pipe.transformer.blocks[-1].ff.register_forward_hook(lambda *_: calls.append(1))
    cache.apply(pndm_pipe)
    try:
        pndm_pipe(image, **PNDM_KW)
    finally:
        cache.remove(pndm_pipe)
        handle.remove()
    assert cache.skipped == skipped and len(calls) == 13 - len(skipped)


# -- Enhance-A-Video -------------------------------------------------------------------------
def _reference_factor(query, key, frames, weight):
    """The formula written out loop by loop in float64."""
    q, k = query.double(), key.double()
    batch, heads, length, dim = q.shape
    spatial = length // frames
    total, count = 0.0, 0
    for b in range(batch):
        for n in range(heads):
            for s in range(spatial):
                qs = q[b, n, s::spatial][:frames]  # token of position s in every frame
                ks = k[b, n, s::spatial][:frames]
                attn = torch.softmax(qs @ ks.T / dim**0.5, dim=-1)
                total += (attn.sum() - attn.trace()).item() / (frames * frames - frames)
                count += 1
    return max(1.0, total / count * (frames + weight))


@pytest.mark.parametrize("weight", [0.0, 2.0, 9.5])
def test_enhance_factor_matches_the_written_out_formula(weight):
    g = torch.Generator().manual_seed(0)
    frames, spatial = 3, 5
    query = torch.randn(2, 2, frames * spatial, 4, generator=g) * 2
    key = query + 0.3 * torch.randn(query.shape, generator=g)  # correlated: strong cross-frame attention
    got = enhance_factor(query, key, frames, weight)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(_reference_factor(query, key, frames, weight), rel=1e-5)


def test_enhance_a_video_weight_zero_equals_the_plain_run(pipe, image, plain):
    eav = EnhanceAVideo(weight=0)
    eav.apply(pipe)
    assert not hook_names(pipe) and not pipe.callbacks
    assert torch.equal(pipe(image, **KW), plain)
    eav.remove(pipe)


def test_enhance_a_video_scales_self_attention_only_on_its_steps(pipe, image, plain):
    eav = EnhanceAVideo(weight=9.0, skip_start_steps=1, skip_end_steps=1)
    seen = []
    original = eav.factor
    eav.factor = lambda q, k, f: seen.append((q.shape, k.shape, f)) or original(q, k, f)
    eav.apply(pipe)
    try:
        video = pipe(image, **KW)
    finally:
        eav.remove(pipe)
    assert not torch.equal(video, plain)
    # calls 1-3 of 5, each block's attn1 once; q and k (CFG batch 2, 2 heads, 2 latent frames x 4 x 4 tokens, 16)
    assert seen == [((2, 2, 32, 16), (2, 2, 32, 16), 2)] * (3 * len(pipe.transformer.blocks))
    assert not hook_names(pipe) and not pipe.callbacks
    assert torch.equal(pipe(image, **KW), plain)


@pytest.mark.parametrize(("start", "end", "enhanced"), [(1, 1, [1, 2]), (0, 0, [0, 1, 2, 3])])
def test_enhance_a_video_window_counts_model_calls_like_the_original(pndm_pipe, image, start, end, enhanced):
    """The original compares its call counter with the user's 4 steps: calls start..4 - end - 1
    are enhanced, and none of PNDM's calls 4..12, though they belong to steps 1-3."""
    eav = EnhanceAVideo(weight=9.0, skip_start_steps=start, skip_end_steps=end)
    where, seen = CallIndex(), set()
    original = eav.factor
    eav.factor = lambda q, k, f: seen.add(where.call) or original(q, k, f)
    eav.apply(pndm_pipe)
    try:
        pndm_pipe(image, callbacks=[where], **PNDM_KW)
    finally:
        eav.remove(pndm_pipe)
    assert sorted(seen) == enhanced


# -- configuration ---------------------------------------------------------------------------
def _plugins(*overrides: str) -> list:
    """The plugins a composed infer config validates into (no weights load)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="infer", overrides=[*overrides, "device=cpu"])
    return list(PipelineSpec.from_config(cfg).validate().plugins)


def test_config_groups_build_the_plugins(tmp_path):
    lora = _peft_file(tmp_path / "l.safetensors", {"x": (torch.ones(1, 2), torch.ones(2, 1))})
    plugins = _plugins("plugin=[teacache,enhance_a_video]", "plugin.teacache.threshold=0.15", "plugin.enhance_a_video.weight=2",
                       f"lora=[{{path: {lora}, strength: 1.2}}]")  # fmt: skip
    assert _plugins() == []
    assert [type(p) for p in plugins] == [LoRAWeights, TeaCache, EnhanceAVideo]  # the lora list, then the plugin list in order
    assert plugins[0].strength == 1.2 and plugins[1].threshold == 0.15 and plugins[2].weight == 2.0
    assert [type(p) for p in _plugins("plugin=[enhance_a_video,teacache]")] == [EnhanceAVideo, TeaCache]
    single = _plugins("plugin=[lora]", f"plugin.lora.path={lora}", "plugin.lora.strength=0.5")
    assert [type(p) for p in single] == [LoRAWeights] and single[0].strength == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["plugin=[teacache]", "plugin.teacache.threshold=-0.1"], r"plugin.teacache.threshold=-0.1 must be a number >= 0"),
        (["plugin=[teacache]", "plugin.teacache.skip_start_steps=0"], r"plugin.teacache.skip_start_steps=0 must be an integer >= 1"),
        (["plugin=[enhance_a_video]", "plugin.enhance_a_video.weight=10"], r"plugin.enhance_a_video.weight=10 must be a number in \[0, 10\)"),
        (["lora=[{path: a.bin}]"], r"must be a .safetensors file"),
        (["plugin=[teacache]", "compile=regional", "compile.fullgraph=true"], r"teacache .* use compile.fullgraph=false"),
        (["lora=[{path: missing.safetensors}]"], r"does not exist"),
    ],
)
def test_bad_plugin_options_fail_up_front(overrides, message):
    with pytest.raises(RuyiUserError, match=message):
        _plugins(*overrides)


def test_lora_strength_must_be_numeric(tmp_path):
    path = _peft_file(tmp_path / "l.safetensors", {"x": (torch.ones(1, 2), torch.ones(2, 1))})
    with pytest.raises(RuyiUserError, match="strength='strong' must be a number"):
        _plugins(f"lora=[{{path: {path}, strength: strong}}]")
