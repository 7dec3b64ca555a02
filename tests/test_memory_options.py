"""Memory options (configs/memory/): the same video as without them, less memory, and memory=auto's choice.

Outputs are compared with the plain pipeline on the tiny fixture in float32 on the CPU; memory is
compared with ``ruyi.memory.estimate`` on the real 7B block shape on the meta device, against
byte counts worked out by hand below.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook
from hydra import compose, initialize_config_dir

import ruyi
from ruyi.assembly import PipelineSpec
from ruyi.errors import ConfigError
from ruyi.io import procedural_image
from ruyi.memory import auto as auto_module
from ruyi.memory.estimate import live_tensors
from ruyi.memory.rules import Rule
from ruyi.plugins import EnhanceAVideo, TeaCache
from ruyi.registry import MEMORIES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOWHERE = Path("/nonexistent/checkpoint")
KW = {"frames": 8, "video_size": [64, 64], "steps": 2, "seed": 5, "progress": False}  # 32 tokens per item
# batch-size and row-count dependent matmul blocking: float tolerance on a video in [0, 1]
TOLERANCE = 1e-4
GIB = 1024**3


def _video(fixture_dir, **options) -> torch.Tensor:
    pipe = ruyi.load_pipeline(fixture_dir, device="cpu", **options)
    return pipe(procedural_image(96, 64), **KW)


@pytest.fixture(scope="module")
def reference(fixture_dir):
    return _video(fixture_dir)


@pytest.mark.parametrize(
    ("name", "options", "exact"),
    [
        ("cfg_split", {}, False),
        ("cfg_split", {"granularity": "block"}, False),
        ("token_chunks", {"chunk_tokens": 7}, False),  # 32 tokens -> 5 uneven slices
        ("inplace", {"chunk_tokens": 5}, True),
        ("vae_stream", {}, True),
        ("combo", {"options": {"token_chunks": {"chunk_tokens": 7}, "inplace": {"chunk_tokens": 3}}}, False),
    ],
    ids=["cfg_split", "cfg_split_block", "token_chunks", "inplace", "vae_stream", "combo"],
)
def test_option_gives_the_plain_video(fixture_dir, reference, name, options, exact):
    video = _video(fixture_dir, strategies={"memory": (name, options)})
    if exact:
        assert torch.equal(video, reference)
    else:
        error = (video - reference).abs().max().item()
        assert 0 <= error < TOLERANCE, f"{name}: {error}"


def test_vae_stream_keeps_the_tiled_decode_and_leaves_the_gpu(fixture_dir):
    # 64 px frames in 2 x 2 overlapping tiles of 32 px
    pipe = ruyi.load_pipeline(fixture_dir, device="cpu", vae_tile_size=32, vae_tile_overlap=16,
                              strategies={"memory": "vae_stream"})  # fmt: skip
    vae = pipe.vae
    assert vae.output_device == torch.device("cpu")
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    single = latents[:, :, :1]  # one latent frame: one piece of one frame
    streamed = [vae.decode(latents), vae.decode(single), torch.cat(list(vae.decode_chunks(latents)), dim=2)]
    vae.disable_host_output()
    own = [vae.decode(latents), vae.decode(single), vae.decode(latents)]  # the VAE's own tiled decode
    assert streamed[0].device.type == "cpu" and streamed[0].shape == (1, 3, 8, 64, 64)
    assert all(torch.equal(s, o) for s, o in zip(streamed, own))


def test_vae_stream_and_combo_on_a_vae_that_decodes_in_one_piece():
    """The shipped tiny default's pixel_patch VAE has no mini-batches to stream (vae_stream crashed on
    it, and so did combo): its decoded video goes to host memory whole, bit for bit the same."""
    from ruyi.assembly import build

    videos = {}
    for memory in ("null", "vae_stream", "combo"):
        chosen = [] if memory == "null" else [f"memory={memory}"]
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            cfg = compose(config_name="infer", overrides=["device=cpu", *chosen])
        pipe = build(PipelineSpec.from_config(cfg))
        assert type(pipe.vae).__name__ == "PixelPatchVAE"
        videos[memory] = pipe(procedural_image(), **KW)
    assert torch.equal(videos["vae_stream"], videos["null"])
    assert (videos["combo"] - videos["null"]).abs().max().item() < TOLERANCE


def _own_forward(module: torch.nn.Module) -> bool:
    return getattr(module.forward, "__func__", None) is type(module).forward


def test_remove_restores_the_models(fixture_dir, reference):
    pipe = ruyi.load_pipeline(fixture_dir, device="cpu")
    option = MEMORIES.get("combo")(options={"token_chunks": {"chunk_tokens": 7}})
    option.apply(pipe)
    hooked = [m for m in pipe.transformer.modules() if not _own_forward(m)]
    # cfg_split on the transformer, token_chunks on 11 submodules of each block, inplace on each GELU
    blocks = len(pipe.transformer.blocks)
    assert len(hooked) >= 1 + 10 * blocks and pipe.transformer in hooked
    assert pipe.vae.output_device is not None
    option.remove(pipe)
    assert all(_own_forward(m) for m in pipe.transformer.modules())
    assert all(not m._diffusers_hook.hooks for m in hooked)
    assert pipe.vae.output_device is None
    processors = [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")]
    assert {p.rotary.__name__ for p in processors} == {"apply_rotary_emb"}
    assert torch.equal(pipe(procedural_image(96, 64), **KW), reference)


class BatchLog(ModelHook):
    """An outer hook, as offload hooks are: it logs the batch it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = []

    def pre_forward(self, module, *args, **kwargs):
        self.batches.append(args[0].shape[0])
        return args, kwargs


def test_a_hook_on_top_keeps_working_after_remove(fixture_dir, reference):
    """A hook registered after ours (outside it) stays in charge when ours comes off."""
    pipe = ruyi.load_pipeline(fixture_dir, device="cpu")
    split = MEMORIES.get("cfg_split")(granularity="block")
    split.apply(pipe)
    block, log = pipe.transformer.blocks[0], BatchLog()
    HookRegistry.check_if_exists_or_initialize(block).register_hook(log, "outside")
    assert (pipe(procedural_image(96, 64), **KW) - reference).abs().max().item() < TOLERANCE
    split.remove(pipe)
    assert list(block._diffusers_hook.hooks) == ["outside"]
    assert torch.equal(pipe(procedural_image(96, 64), **KW), reference)
    assert log.batches == [2, 2, 2, 2]  # each step, on the whole batch: outside the split before and after


def test_a_hook_under_ours_can_come_off_first(fixture_dir):
    """diffusers relinks the hook above a removed one; ours stays in force all the same."""
    pipe = ruyi.load_pipeline(fixture_dir, device="cpu")
    block, seen = pipe.transformer.blocks[0], BatchLog()
    registry = HookRegistry.check_if_exists_or_initialize(block)
    registry.register_hook(seen, "innermost")
    registry.register_hook(ModelHook(), "below")
    split = MEMORIES.get("cfg_split")(granularity="block")
    split.apply(pipe)
    registry.remove_hook("below", recurse=False)
    pipe(procedural_image(96, 64), **KW)
    split.remove(pipe)
    assert seen.batches == [1, 1, 1, 1]  # two steps, the guidance pair one item at a time
    assert list(registry.hooks) == ["innermost"]


@pytest.mark.parametrize("plugin", [TeaCache(), EnhanceAVideo(weight=2)], ids=["teacache", "enhance_a_video"])
def test_cfg_split_refuses_whole_batch_statistics_before_loading(plugin):
    with pytest.raises(ConfigError, match=f"{plugin.registry_name} takes statistics over the whole batch"):
        ruyi.load_pipeline(NOWHERE, device="cpu", plugins=[plugin], strategies={"memory": "cfg_split"})


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"use": ["cfg_split", "auto"]}, "may not contain auto"),
        ({"use": ["inplace", "inplace"]}, "names an option twice"),
        ({"use": ["inplace"], "options": {"cfg_split": {}}}, "settings for cfg_split"),
        ({"use": ["nope"]}, "unknown memory 'nope'"),
        ({"use": ["token_chunks"], "options": {"token_chunks": {"chunk_tokens": 0}}}, "chunk_tokens=0"),
        ({"use": ["cfg_split"], "options": {"cfg_split": {"granularity": "layer"}}}, "granularity='layer'"),
    ],
)
def test_combo_mistakes_are_config_errors(options, words):
    with pytest.raises(ConfigError, match=None) as info:
        ruyi.load_pipeline(NOWHERE, device="cpu", strategies={"memory": ("combo", options)})
    assert words in str(info.value)


# -- memory at the real shape (meta device) ---------------------------------------------------------
def test_live_tensors_counts_bytes_by_hand():
    with live_tensors() as live:
        a = torch.empty(256, 1024)  # 1 MiB
        b = a * 2  # 2 MiB
        view = b[:10]
        c = torch.empty(512, 1024, dtype=torch.bfloat16)  # 3 MiB: the peak
        del a, b, c
        assert live.live_bytes == 1 << 20  # b's storage lives on through its view
        del view
    assert live.peak.peak_bytes == 3 << 20 and live.live_bytes == 0
    assert sorted(a.nbytes for a in live.peak.live_at_peak) == [1 << 20] * 3


def _block_peak(*options: str, batch: int = 1) -> int:
    """Peak bytes of one 7B block (with CLIP attention and a long skip) at 768 x 768 x 120 frames."""
    from ruyi.models.transformer.block import RuyiDiTBlock

    dim, tokens = 2816, 30 * 48 * 48
    with torch.device("meta"):
        block = RuyiDiTBlock(
            dim, 32, cross_attention_dim=1024, ff_inner_dim=12288, activation_fn="gelu-approximate", skip=True,
            time_position_encoding=True, clip_attention=True,
        ).to(torch.bfloat16)  # fmt: skip
        x, skip = (torch.empty(batch, tokens, dim, dtype=torch.bfloat16) for _ in range(2))
        temb, text = (
            torch.empty(batch, dim, dtype=torch.bfloat16),
            torch.empty(batch, 333, 1024, dtype=torch.bfloat16),
        )
        clip, rotary = torch.empty(batch, 16, 1024, dtype=torch.bfloat16), (torch.empty(tokens, 88),) * 2
    pipe = SimpleNamespace(transformer=SimpleNamespace(blocks=[block], modules=block.modules))
    for name in options:
        MEMORIES.get(name)().apply(pipe)
    with torch.no_grad(), live_tensors(sites=False) as live:
        block(x, temb=temb, encoder_hidden_states=text, image_rotary_emb=rotary, num_frames=30,
              clip_encoder_hidden_states=clip, skip=skip)  # fmt: skip
    return live.peak.peak_bytes


def test_real_shape_block_peaks_drop_where_the_arithmetic_says():
    tokens, heads, head_dim, dim, chunk = 30 * 48 * 48, 32, 88, 2816, 16384
    hidden = tokens * dim * 2  # one bf16 hidden state of one item: 0.36 GiB
    fp32_q = tokens * heads * head_dim * 4  # one float32 copy of a query: 0.73 GiB
    fp32_slice = chunk * heads * head_dim * 4
    plain = _block_peak()
    # diffusers' rotary holds three float32 copies of q (or k) next to q, k and v
    assert plain >= 3 * fp32_q + 3 * hidden
    assert _block_peak(batch=2) >= 2 * plain - hidden  # transients scale with the batch
    # lean: what is left is a few hidden-size tensors (h, norm, q, k, v, rotated q and k, output)
    # and one slice's float32 rotary maths: no whole-video float32 copy, no 12 288-wide buffer
    lean = _block_peak("inplace", "token_chunks")
    assert lean <= 7 * hidden + 4 * fp32_slice
    # token chunks alone leave the rotary peak where it was
    assert _block_peak("token_chunks") == plain


# -- memory=auto -------------------------------------------------------------------------------------
RULES = (
    Rule("fast", "none", peak_gib={(512, 120): 26.0, (768, 120): 39.0}, step_ratio={(512, 120): 1.0, (768, 120): 1.0}),
    Rule("resident", "none", vae_tile_size=384, memory=("cfg_split", "token_chunks"),
         peak_gib={(512, 120): 17.0, (768, 120): 19.0}, step_ratio={(512, 120): 1.02, (768, 120): 1.01}),
    Rule("streamed", "group", skip_steps=1, vae_tile_size=384, memory=("cfg_split", "inplace"),
         peak_gib={(512, 120): 3.5, (768, 120): 5.5}, step_ratio={(512, 120): 1.1, (768, 120): 1.05}),
)  # fmt: skip


def _auto_plan(fixture_dir, monkeypatch, free_gib, *, plugins=(), frames=120, base_resolution=768, **spec):
    monkeypatch.setattr(auto_module, "RULES", RULES)
    monkeypatch.setattr(auto_module, "free_gpu_gib", lambda device: free_gib)
    options = {"frames": frames, "base_resolution": base_resolution}
    plan = PipelineSpec.from_names(fixture_dir, device="cpu", plugins=plugins, **spec,
                                   strategies={"memory": ("auto", options)}).validate()  # fmt: skip
    # as on a GPU machine: the checks of the candidate plans see a CUDA device
    return _memory(plan).resolve(dataclasses.replace(plan, device=torch.device("cuda")))


def _memory(plan):
    (strategy,) = [s for s in plan.strategies if s.stage == "memory"]
    return strategy


@pytest.mark.parametrize(
    ("free_gib", "frames", "base_resolution", "expected"),
    [
        (80, 120, 768, "fast"),  # 39 GiB fits 72 GiB
        (40, 120, 768, "resident"),  # 39 > 36 after headroom
        (24, 120, 768, "resident"),  # 19 <= 21.6
        (24, 24, 512, "resident"),  # 512 x 24 is predicted from 512 x 120 (the next larger measurement)
        (8, 120, 768, "streamed"),
        (4, 120, 512, "streamed"),  # 3.5 <= 3.6
    ],
)
def test_auto_picks_the_fastest_rule_that_fits(
    fixture_dir, monkeypatch, caplog, free_gib, frames, base_resolution, expected
):
    caplog.set_level(logging.INFO, logger="ruyi.memory.auto")
    plan = _auto_plan(fixture_dir, monkeypatch, free_gib, frames=frames, base_resolution=base_resolution)
    auto = _memory(plan)
    assert auto.choice.rule.name == expected
    rule = auto.choice.rule
    assert (plan.spec.offload.name, plan.spec.skip_steps, plan.spec.vae_tile_size) == (
        rule.offload,
        rule.skip_steps,
        rule.vae_tile_size,
    )
    assert type(plan.offload).registry_name == rule.offload
    assert [type(o).registry_name for o in auto._options] == list(rule.memory)
    message = caplog.records[-1].getMessage()
    assert f"{free_gib:.1f} GiB free" in message and expected in message and "predicted peak" in message


def test_auto_logs_when_nothing_fits_and_takes_the_smallest(fixture_dir, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="ruyi.memory.auto")
    plan = _auto_plan(fixture_dir, monkeypatch, 3.0)
    assert _memory(plan).choice.rule.name == "streamed" and not _memory(plan).choice.fits
    assert (
        caplog.records[-1].levelno == logging.WARNING
        and "may run out of memory" in caplog.records[-1].getMessage()
    )


def test_auto_skips_rules_the_plugins_refuse(fixture_dir, monkeypatch, caplog):
    """TeaCache cannot run with a split batch (both smaller rules use cfg_split): only 'fast' remains."""
    caplog.set_level(logging.INFO, logger="ruyi.memory.auto")
    plan = _auto_plan(fixture_dir, monkeypatch, 8.0, plugins=[TeaCache()])
    assert _memory(plan).choice.rule.name == "fast"
    assert "resident ruled out" in caplog.text and "streamed ruled out" in caplog.text


def test_auto_refuses_settings_it_owns(fixture_dir, monkeypatch):
    with pytest.raises(
        ConfigError, match="memory=auto chooses offload, skip_steps, vae_tile_size itself.*sets skip_steps"
    ):
        _auto_plan(fixture_dir, monkeypatch, 8.0, skip_steps=1)


def test_auto_on_the_cpu_changes_nothing_and_runs(fixture_dir, reference):
    video = _video(fixture_dir, strategies={"memory": "auto"})
    assert torch.equal(video, reference)


def test_auto_reads_the_shape_from_the_config(fixture_dir):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="infer", overrides=["model=ruyi_tiny", f"model.path={fixture_dir}", "memory=auto", "frames=48",
                                                      "base_resolution=512", "memory.budget_gib=8"])  # fmt: skip
    (component,) = [c for c in PipelineSpec.from_config(cfg).strategies if c.kind == "memory"]
    auto = component.create()
    assert (auto.frames, auto.side, auto.budget_gib) == (48, 512.0, 8)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(
            config_name="benchmark", overrides=["memory=auto", "bench.resolution=768", "frames=120"]
        )
    (component,) = [c for c in PipelineSpec.from_config(cfg).strategies if c.kind == "memory"]
    assert component.create().side == 768.0


# -- on a GPU ------------------------------------------------------------------------------------------
SMALL = {
    "token_chunks": {"chunk_tokens": 50},
    "inplace": {"chunk_tokens": 40},
}  # 16 frames at 96 px: 144 tokens
GPU_CASES = {
    "cfg_split": {"strategies": {"memory": "cfg_split"}},
    "cfg_split_block": {"strategies": {"memory": ("cfg_split", {"granularity": "block"})}},
    "token_chunks": {"strategies": {"memory": ("token_chunks", SMALL["token_chunks"])}},
    "inplace": {"strategies": {"memory": ("inplace", SMALL["inplace"])}},
    "vae_stream": {"strategies": {"memory": "vae_stream"}},
    "combo": {"strategies": {"memory": ("combo", {"options": SMALL})}},
    # what memory=auto picks for small cards: streamed blocks and skips under every option
    "group_skip_combo": {"offload": "group", "skip_steps": 1, "strategies": {"memory": ("combo", {"options": SMALL})}},
    "group_skip_combo_block": {
        "offload": "group", "skip_steps": 1,
        "strategies": {"memory": ("combo", {"options": {**SMALL, "cfg_split": {"granularity": "block"}}})},
    },
}  # fmt: skip
BIT_EXACT = ("inplace", "vae_stream")
# float32 (TF32 off) proves the options compute the same thing (another row or batch count only
# changes the summation order); bf16 adds the kernels' rounding, amplified over the denoising steps of a random
# model: token_chunks measured 2.9e-2 there on an H200 (2026-12-01)
GPU_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", list(GPU_TOLERANCE))
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_options_match_the_plain_path_on_cuda(fixture_dir, case, dtype, monkeypatch):
    # TF32 convolutions (cuDNN's default) round inputs to 10 bits: a 1e-7 change in the latents
    # moves the decoded video by ~1e-3 (8.7e-4 measured on an H200). Off, float32 shows the options' own error.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    def run(**options):
        pipe = ruyi.load_pipeline(
            fixture_dir, device="cuda", dtype=dtype, vae_tile_size=64, vae_tile_overlap=16, **options
        )
        # 16 frames: two decoder mini-batches, so the VAE's causal cache crosses the offload hooks
        return pipe(procedural_image(96, 96), frames=16, video_size=[96, 96], steps=3, seed=7, progress=False)

    expected, got = run(), run(**GPU_CASES[case])
    error = ((got - expected).norm() / expected.norm()).item()
    print(f"{case} {dtype}: relative error {error:.2e}")
    assert error <= (1e-6 if case in BIT_EXACT else GPU_TOLERANCE[dtype]), f"{case} {dtype}: relative error {error:.2e}"


# -- benchmarks/memory_profile.py's trace analysis ---------------------------------------------------
def test_profile_replay_finds_the_peak_and_who_allocated_it():
    sys.path.insert(0, str(CONFIGS.parent))
    from benchmarks.memory_profile import peak_table, replay

    def frames(*sites):
        return [{"filename": f, "line": 1, "name": n} for f, n in sites]

    ff = frames(("/x/torch/nn/functional.py", "linear"), ("/r/ruyi/models/block.py", "forward"))
    rope = frames(("/r/diffusers/models/embeddings.py", "apply_rotary_emb"))
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": ff},
        {"action": "segment_alloc", "addr": 0, "size": 4096},  # the cache growing: not allocated bytes
        {"action": "alloc", "addr": 2, "size": 300, "frames": rope},
        {"action": "free_requested", "addr": 2, "size": 300},  # still in use by a stream: counts on
        {"action": "alloc", "addr": 3, "size": 50, "frames": ff},  # 1000 + 450: the peak
        {"action": "free_completed", "addr": 2, "size": 300},
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 4, "size": 200, "frames": rope},
    ]
    result = replay(trace, baseline=1000)
    assert result["peak"] == 1450 and result["peak_index"] == 4
    assert result["timeline"] == [1100, 1400, 1450, 1150, 1050, 1250]
    rows = peak_table(result["live_at_peak"], 1000, top=1)
    assert rows == [
        ("(allocated before the step: weights kept, latents, conditioning)", 1000, 0),
        ("models/embeddings.py:1 apply_rotary_emb", 300, 1),
        ("(1 other sites)", 150, 2),  # the two linear blocks, named after ruyi/models/block.py
    ]
    assert peak_table(result["live_at_peak"], 1000, top=5)[2] == ("models/block.py:1 forward", 150, 2)


def test_memory_rows_select_what_each_rule_describes():
    """benchmarks/memory_rows.py measures a rule through Hydra overrides: they must build its settings."""
    sys.path.insert(0, str(CONFIGS.parent))
    from benchmarks.memory_rows import rule_overrides
    from ruyi.memory.rules import RULES

    for rule in RULES:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            cfg = compose(config_name="benchmark", overrides=rule_overrides(rule))
        spec = PipelineSpec.from_config(cfg)
        assert (spec.offload.name, spec.skip_steps, spec.vae_tile_size) == (
            rule.offload,
            rule.skip_steps,
            rule.vae_tile_size,
        )
        placement = spec.offload.create()
        assert {k: getattr(placement, k) for k in rule.offload_options} == dict(rule.offload_options)
        memory = [c.create() for c in spec.strategies if c.kind == "memory"]
        if not rule.memory:
            assert memory == []
            continue
        options = {type(o).registry_name: o for o in memory[0].options}
        assert list(options) == list(rule.memory)
        for name, settings in rule.memory_options.items():
            assert {k: getattr(options[name], k) for k in settings} == dict(settings)


def test_profile_runs_one_recorded_step_through_the_real_call(monkeypatch, tmp_path, capsys):
    """The GPU path of memory_profile.py on the CPU, with torch.cuda's recorder stood in for."""
    sys.path.insert(0, str(CONFIGS.parent))
    from benchmarks import memory_profile

    events = []
    fake = [
        {
            "action": "alloc",
            "addr": 7,
            "size": 3 * GIB,
            "frames": [{"filename": "/r/ruyi/x.py", "line": 9, "name": "f"}],
        }
    ]
    stand_ins = {
        "synchronize": lambda: None, "reset_peak_memory_stats": lambda: None, "memory_allocated": lambda: GIB,
        "max_memory_allocated": lambda: 4 * GIB, "current_device": lambda: 0, "get_device_name": lambda: "stand-in",
    }  # fmt: skip
    for name, value in stand_ins.items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(
        torch.cuda.memory, "_record_memory_history", lambda enabled="all", **kw: events.append(enabled)
    )
    monkeypatch.setattr(torch.cuda.memory, "_snapshot", lambda: {"device_traces": {0: fake}})
    calls = []
    monkeypatch.setattr(memory_profile, "StepRecorder", _counting(memory_profile.StepRecorder, calls))
    overrides = ["model=ruyi_tiny", "device=cpu", "dtype=float32", "frames=8", "bench.resolution=64"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="benchmark", overrides=overrides)
    result = memory_profile.profile_gpu(cfg, top=5, out=tmp_path, warmup=1)
    assert events == ["all", None]  # recording switched on and off once
    assert calls == [0, 1, 1]  # the second model call is the recorded one
    assert result["peak_gib"] == 4.0 and result["rows"][1] == ("ruyi/x.py:9 f", 3 * GIB, 1)
    assert (tmp_path / "snapshot.pickle").is_file() and "stand-in" in capsys.readouterr().out


def _counting(recorder_cls, calls):
    class Counting(recorder_cls):
        def on_step_begin(self, state):
            calls.append(state.call)
            super().on_step_begin(state)

        def on_step_end(self, state):
            if state.call == self.call:
                calls.append(state.call)
            super().on_step_end(state)

    return Counting


@pytest.mark.parametrize("granularity", ["transformer", "block"])
def test_every_option_under_group_offload_and_skip_parking_equals_the_plain_path(fixture_dir, granularity):
    """What memory=auto picks for small cards, on the CPU (hooks without streams): the video, not
    only the latents, so the VAE's decode under offload hooks is covered too."""
    options = {**SMALL, "cfg_split": {"granularity": granularity}}

    def run(**extra):
        pipe = ruyi.load_pipeline(fixture_dir, device="cpu", vae_tile_size=64, vae_tile_overlap=16, **extra)
        return pipe(procedural_image(96, 96), frames=16, video_size=[96, 96], steps=2, seed=7, progress=False)

    expected = run()
    got = run(offload="group", offload_kwargs={"use_stream": False}, skip_steps=1,
              strategies={"memory": ("combo", {"options": options})})  # fmt: skip
    error = ((got - expected).norm() / expected.norm()).item()
    assert error <= 1e-5, f"relative error {error:.2e}"


def test_host_plan_of_the_7b_agrees_with_the_measured_row_and_ranks_the_placements():
    """group_lean at 768 x 120 measured 39.7 GiB of host RAM on an H100 when the transformer went
    through from_pretrained and the hooks pinned a copy of every streamed weight (2 host copies +
    parked skips). Loaded straight into place it keeps one; on disk none; the loading peak bounds
    them below. Expected values by hand: 7.19e9 weights, 0.4e9 others, bf16; skips 20 x 69 120 x 2816."""
    from ruyi.memory.host import ModelBytes, host_peak_gib

    model = ModelBytes.of(None)
    kw = dict(model=model, dtype_bytes=2, side=768, frames=120, skip_steps=1, cfg_split=True, vae_stream=True)
    before = host_peak_gib(host_copies=2.0, other_copies=2.0, streams=False, **kw)
    assert abs(before - 39.7) / 39.7 < 0.1
    weights, others = 7.19e9 * 2 / GIB, 0.4e9 * 2 / GIB
    skips = 20 * (120 // 4 * 48 * 48) * 2816 * 2 / GIB  # 69 120 tokens at 768 px x 120 frames
    video = 120 * 768 * 768 * 3 * 4 / GIB
    one = host_peak_gib(host_copies=1.0, other_copies=2.0, streams=True, **kw)
    assert one == pytest.approx(3.0 + weights + 2 * others + skips + video)
    assert before - one == pytest.approx(weights)  # the whole second copy, and nothing else
    disk = host_peak_gib(host_copies=0.0, other_copies=0.0, streams=True, **kw)
    assert disk == pytest.approx(3.0 + skips + video)
    # without the skips the loading peak decides: the disk plan still reads the VAE and encoder once
    bare = dict(kw, skip_steps=0, vae_stream=False)
    assert host_peak_gib(host_copies=0.0, other_copies=0.0, streams=True, **bare) == pytest.approx(3.0 + others)
    assert host_peak_gib(host_copies=0.0, streams=False, **bare) == pytest.approx(3.0 + weights + others)
    # FP8 storage of half the bytes: half the kept copy
    half = host_peak_gib(host_copies=1.0, other_copies=2.0, streams=True, stored_share=0.5, **kw)
    assert one - half == pytest.approx(weights / 2)


def test_stored_share_counts_fp8_bytes_against_the_pipeline_dtype():
    from ruyi.memory.host import stored_share

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))  # 16 + 4 + 8 + 2 weights
    fp8 = type("P", (), {"stored_as": lambda self, m: {"0.weight": torch.float8_e4m3fn, "0.bias": torch.float8_e4m3fn}})()
    assert stored_share(model, fp8, 2) == pytest.approx((20 * 1 + 10 * 2) / (30 * 2))
    assert stored_share(model, fp8, 4) == pytest.approx((20 * 1 + 10 * 4) / (30 * 4))
    assert stored_share(model, object(), 2) == 1.0


def test_fp8_storage_modes_shrink_the_7b_as_their_layers_say():
    """fp8_strong converts every block linear of at least hidden x hidden weights: counted here from
    the block's own shapes (attention projections and the MLP), not from the precision's rule."""
    from ruyi.hydra_config import load_preset
    from ruyi.memory.host import stored_share
    from ruyi.models.loading import meta_model
    from ruyi.models.transformer import RuyiTransformer3D
    from ruyi.registry import PRECISIONS

    arch = load_preset("ruyi_mini_7b")["transformer_arch"]
    model = meta_model(RuyiTransformer3D, {**arch, **RuyiTransformer3D.config_overrides})
    shares = {m: stored_share(model, PRECISIONS.get(m)(), 2) for m in ("bf16", "fp8_lite", "fp8_strong", "fp8_extreme")}
    assert shares["bf16"] == 1.0
    assert 0.5 < shares["fp8_extreme"] < shares["fp8_strong"] < shares["fp8_lite"] < 1.0
    hidden = arch["hidden_size"]
    big = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
              for m in model.blocks.modules() if isinstance(m, torch.nn.Linear) and m.weight.numel() >= hidden * hidden)  # fmt: skip
    total = sum(p.numel() for p in model.parameters())
    assert shares["fp8_strong"] <= 1 - big / total / 2 + 1e-9  # at least the block linears of >= h^2 halve


def test_auto_takes_the_fastest_rule_that_fits_gpu_and_host_ram():
    gpu = {(768, 120): 5.5}
    rules = [Rule("pinned", "group", peak_gib=gpu, step_ratio={(768, 120): 1.02}),
             Rule("one_copy", "group", peak_gib=gpu, step_ratio={(768, 120): 1.06}),
             Rule("disk", "group", peak_gib=gpu, step_ratio={(768, 120): 1.15})]  # fmt: skip
    host = {"pinned": (39.7, True), "one_copy": (24.4, False), "disk": (17.1, False)}
    pick = lambda ram: auto_module.choose(rules, side=768, frames=120, budget_gib=7.2, host_gib=host, host_budget_gib=ram)[0]  # noqa: E731
    assert pick(64).rule.name == "pinned" and pick(28).rule.name == "one_copy" and pick(20).rule.name == "disk"
    smallest = pick(12)  # nothing fits 12 GiB of RAM: the least RAM, flagged as not fitting
    assert smallest.rule.name == "disk" and not smallest.fits


def test_a_24_gb_card_is_not_offered_none_lean_at_768x120():
    """none_lean was estimated at 18.7 GiB at 768 x 120 and measured at 26.1 GiB on an H100 (RESULTS.md,
    tenth session): a 24 GB card (about 22 GiB usable after the context) must get an offloading rule."""
    from ruyi.memory.rules import RULES

    for side in (512, 768):
        choice = auto_module.choose(RULES, side=side, frames=120, budget_gib=22.0)[0]
        assert choice.fits and choice.rule.offload == "group", (side, choice.rule.name)
    none_lean = next(r for r in RULES if r.name == "none_lean")
    assert none_lean.predict(768, 120)[0] > 24.0
