"""Several processes on CPU (gloo): Ulysses, CFG parallel and sharded weights reproduce the
single-process results of the tiny model in float32, and Ulysses runs the ``attention=`` kernel.

Each scenario starts N worker processes (``worker`` below), one per rank, that join a gloo process
group; every rank runs one self-attention call, one transformer forward and 3-step generations, and
saves what it got. The references are computed here, in the pytest process, without
torch.distributed. Workers fork from a server that imported torch, diffusers and ruyi once: on two
busy cores, importing them in every rank would cost more than all the work. The real ``torchrun``
launch is tested in test_parallel_cli.py.

The same tests run on CUDA with NCCL (``-m gpu``), one GPU per rank, for the scenarios that fit the
visible GPUs (2 GPUs: the 2-rank ones).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ruyi.registry import BUILTIN_MODULES

GEN = dict(frames=8, video_size=[64, 64], steps=3, seed=5, progress=False, output_latents=True)
# every scenario's strategy (and attention kernel); ``plugins`` adds TeaCache + Enhance-A-Video
# (+ LoRA when sharding)
SCENARIOS = {
    "ulysses2": dict(nproc=2, parallel=dict(name="ulysses", ulysses=2), attention="math"),
    "cfg2_then_sharded": dict(nproc=2, parallel=dict(name="cfg", cfg=2)),
    "cfg2_ulysses2": dict(nproc=4, parallel=dict(name="ulysses", cfg=2, ulysses=2)),
}
TEACACHE = dict(threshold=0.3, skip_start_steps=1, skip_end_steps=1)
ATTN_LAYER = 1  # a block with a long skip in neither half, no matter


# -- shared by the pytest process and the workers -------------------------------------------------
def golden_inputs(fixture: Path, device: str = "cpu") -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
    """The fixture's first transformer case: batch 2 (a guidance pair), 4 frames of 16 tokens."""
    from safetensors.torch import load_file

    golden = load_file(str(fixture / "golden.safetensors"), device=str(device))
    prefix = "transformer.in."
    found = {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
    return found, (found.pop("image_rotary_emb_cos"), found.pop("image_rotary_emb_sin"))


def attention_inputs(fixture: Path, hidden_size: int, device: str):
    """Random tokens (1, 4 frames x 16, D) and the matching per-frame rotary table."""
    inputs, (cos, sin) = golden_inputs(fixture, device)
    frames = inputs["hidden_states"].shape[2]
    hidden = torch.randn(1, frames * cos.shape[0], hidden_size, generator=torch.Generator().manual_seed(7))
    return hidden.to(device), (cos.repeat(frames, 1), sin.repeat(frames, 1)), frames


def forward(transformer, fixture: Path, device: str) -> torch.Tensor:
    inputs, rotary = golden_inputs(fixture, device)
    kwargs = {**inputs, "image_rotary_emb": rotary}
    return transformer(kwargs.pop("hidden_states"), kwargs.pop("timestep"), **kwargs)


def lora_file(path: Path, transformer) -> Path:
    """Random low-rank deltas on three layers (peft naming), large enough to change the output."""
    from safetensors.torch import save_file

    g, tensors = torch.Generator().manual_seed(11), {}
    modules = dict(transformer.named_modules())
    for name in ("blocks.0.attn1.to_q", "blocks.1.ff.net.2", "blocks.3.attn1.to_v"):
        out_dim, in_dim = modules[name].weight.shape
        tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(2, in_dim, generator=g) * 0.3
        tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(out_dim, 2, generator=g) * 0.3
    save_file(tensors, str(path))
    return path


def make(fixture: Path, device, *, parallel: tuple | None = None, attention: str | None = None, **options):
    """``(pipeline, its parallel strategy or None)`` through the assembly, whose build order is:
    plugins (LoRA merges into whole weights), parallel, skip parking, placement on ``device``, then
    the attention kernel."""
    from ruyi.assembly import PipelineSpec, build
    from ruyi.parallel import ParallelStrategy

    chosen = {"parallel": parallel, "attention": attention}
    strategies = {kind: choice for kind, choice in chosen.items() if choice} or None
    plan = PipelineSpec.from_names(fixture, device=str(device), strategies=strategies, **options).validate()
    pipe = build(plan)
    return pipe, next((s for s in plan.strategies if isinstance(s, ParallelStrategy)), None)


def plugin_pipeline(fixture: Path, lora: Path | None, device, **options):
    """A pipeline with TeaCache and Enhance-A-Video (and a LoRA)."""
    from ruyi.plugins import EnhanceAVideo, LoRAWeights, TeaCache

    cache, enhance = TeaCache(**TEACACHE), EnhanceAVideo(weight=2.0)
    plugins = ([LoRAWeights(path=str(lora), strength=1.0)] if lora else []) + [cache, enhance]
    pipe, _ = make(fixture, device, plugins=plugins, **options)
    return pipe, cache, enhance


def record(pipe, cache, enhance) -> dict[str, list]:
    """Record the statistics that decide the plugins' branches: TeaCache's distances and every
    self-attention's enhance factor."""
    seen: dict[str, list] = {"distances": [], "factors": []}
    distance = cache.rescaled_distance

    def recorded_distance(modulated):
        seen["distances"].append(distance(modulated))
        return seen["distances"][-1]

    factor = enhance.factor

    def recorded_factor(query, key, num_frames):
        value = factor(query, key, num_frames)
        seen["factors"].append(float(value))
        return value

    cache.rescaled_distance = recorded_distance
    enhance.factor = recorded_factor
    return seen


def record_kernel(pipe) -> tuple[list, list]:
    """Every call the ``attention=`` kernel computes, as [*query shape, self_attention], from now on;
    and what the first block's self-attention is made of: [processor, its backend, the backend inside
    that, whether the inside one is the kernel the cross-attention uses]."""
    kernel = pipe.transformer.blocks[0].attn2.processor.attention_backend  # the cross-attention's: never wrapped
    processor = pipe.transformer.blocks[0].attn1.processor
    outer = processor.attention_backend
    inner = getattr(outer, "attention_backend", None)
    layout = [type(processor).__name__, type(outer).__name__, type(inner).__name__, inner is kernel]
    calls: list = []
    compute = kernel.compute

    def recorded(query, key, value, **kwargs):
        calls.append([*query.shape, int(kwargs["self_attention"])])
        return compute(query, key, value, **kwargs)

    kernel.compute = recorded
    return calls, layout


def to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    return {k: to_cpu(v) for k, v in value.items()} if isinstance(value, dict) else value


# -- the worker (one per rank, as torchrun would start it) ----------------------------------------
def worker(rank: int, name: str, nproc: int, out: Path, fixture: Path, lora: Path, device_type: str) -> None:
    """One rank: torchrun's environment variables, a gloo (CPU) or NCCL (one GPU per rank) group."""
    import torch.distributed as dist

    from ruyi.io import procedural_image
    from ruyi.parallel import shutdown
    from ruyi.parallel.tokens import gather_tokens, shard_tokens

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc))
    device = torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{out / 'rendezvous'}", rank=rank, world_size=nproc)
    options = dict(SCENARIOS[name]["parallel"])
    kind, attention = options.pop("name"), SCENARIOS[name].get("attention")
    image, result = procedural_image(64, 64), {}
    with torch.no_grad():
        # "cuda": this rank's GPU
        pipe, strategy = make(fixture, device_type, parallel=(kind, options), attention=attention)
        if attention:
            calls, result["kernel_layout"] = record_kernel(pipe)
        groups = strategy.groups
        if groups.degrees.sequence > 1:
            hidden, rotary, frames = attention_inputs(fixture, pipe.transformer.hidden_size, device)
            parts, index = groups.degrees.sequence, groups.sequence_rank
            local = pipe.transformer.blocks[ATTN_LAYER].attn1(
                shard_tokens(hidden, frames, parts, index), num_frames=frames,
                image_rotary_emb=tuple(shard_tokens(t, frames, parts, index) for t in rotary),
            )  # fmt: skip
            result["attention"] = gather_tokens(local, frames, groups.sequence_group)
        result["forward"] = forward(pipe.transformer, fixture, device)
        if attention:
            result["kernel_calls"] = list(calls)
        result["latents"] = pipe(image, **GEN)
        if name == "cfg2_then_sharded":
            strategy.remove(pipe)
            result["removed"] = pipe(image, **GEN)  # back to one process' work: the same latents
            options["shard_weights"] = True
        # sharded: FSDP moves each block from the CPU to this rank's device as it shards it; the
        # parked long skips are lossless, so the reference needs none
        sharded = options.get("shard_weights", False)
        pipe, cache, enhance = plugin_pipeline(fixture, lora if sharded else None, device_type, parallel=(kind, options),
                                               skip_steps=1 if sharded else 0)  # fmt: skip
        seen = record(pipe, cache, enhance)
        result["plugin_forward"] = forward(pipe.transformer, fixture, device)
        result["plugin_latents"] = pipe(image, **GEN)
        result |= {"distances": seen["distances"], "factors": seen["factors"], "skipped": cache.skipped}
    torch.save(to_cpu(result), out / f"rank{rank}.pt")
    dist.barrier()
    shutdown()


# -- the tests ------------------------------------------------------------------------------------
PRELOAD = ["torch.distributed.fsdp", "diffusers.models.attention_dispatch", "ruyi.assembly", "ruyi.pipeline",
           "ruyi.parallel", *BUILTIN_MODULES, "ruyi.io", __name__]  # fmt: skip


def launch(name: str, tmp: Path, fixture: Path, lora: Path, device: str) -> list[dict]:
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.set_forkserver_preload(PRELOAD)  # the server starts once, at the first launch
    nproc = SCENARIOS[name]["nproc"]
    mp.start_processes(worker, args=(name, nproc, tmp, fixture, lora, device), nprocs=nproc, start_method="forkserver")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    if request.param == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs (4 for the cfg 2 x ulysses 2 case)")
    return request.param


@pytest.fixture(scope="module")
def reference(device, fixture_dir, tmp_path_factory):
    """Single-process results: attention, forward, generations (plain, plugins, plugins + LoRA)."""
    from ruyi.io import procedural_image

    image, ref = procedural_image(64, 64), {}
    with torch.no_grad():
        pipe, _ = make(fixture_dir, device)
        lora = lora_file(tmp_path_factory.mktemp("lora") / "lora.safetensors", pipe.transformer)
        hidden, rotary, frames = attention_inputs(fixture_dir, pipe.transformer.hidden_size, device)
        ref["attention"] = pipe.transformer.blocks[ATTN_LAYER].attn1(hidden, image_rotary_emb=rotary, num_frames=frames)
        ref["forward"] = forward(pipe.transformer, fixture_dir, device)
        ref["latents"] = pipe(image, **GEN)
        for key, with_lora in (("plugins", None), ("plugins_lora", lora)):
            pipe, cache, enhance = plugin_pipeline(fixture_dir, with_lora, device)
            seen = record(pipe, cache, enhance)
            forward_out = forward(pipe.transformer, fixture_dir, device)
            ref[key] = {"forward": forward_out, "latents": pipe(image, **GEN), "skipped": cache.skipped, **seen}
    return to_cpu(ref), lora


@pytest.fixture(scope="module")
def runs(device, reference, fixture_dir, tmp_path_factory):
    """Each scenario's per-rank results (those needing more GPUs than visible are left out)."""
    _, lora = reference
    fits = lambda name: device == "cpu" or SCENARIOS[name]["nproc"] <= torch.cuda.device_count()  # noqa: E731
    return {name: launch(name, tmp_path_factory.mktemp(name), fixture_dir, lora, device) for name in SCENARIOS if fits(name)}


def results(runs: dict, name: str) -> list[dict]:
    if name not in runs:
        pytest.skip(f"{name} needs {SCENARIOS[name]['nproc']} GPUs")
    return runs[name]


def close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    assert got.shape == want.shape
    error = ((got - want).norm() / want.norm()).item()
    assert error <= rtol, f"relative error {error:.2e} > {rtol:.0e}"


def same_on_every_rank(results: list[dict], key: str) -> None:
    for r, result in enumerate(results[1:], start=1):
        assert torch.equal(result[key], results[0][key]), f"rank {r} {key} differs from rank 0"


@pytest.mark.parametrize("name", ["ulysses2", "cfg2_ulysses2"])
def test_attention_call_matches_one_process(runs, reference, name):
    for result in results(runs, name):
        close(result["attention"], reference[0]["attention"], 1e-5)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_forward_and_generation_match_one_process(runs, reference, name):
    ref = reference[0]
    for result in results(runs, name):
        close(result["forward"], ref["forward"], 1e-5)
        close(result["latents"], ref["latents"], 1e-4)
    same_on_every_rank(runs[name], "latents")


def test_ulysses_runs_the_chosen_kernel_on_every_token(runs, fixture_dir):
    """``attention=math`` under Ulysses: the block keeps the model's own processor, whose backend is
    the exchange around the very kernel the cross-attentions use; that kernel computes each
    self-attention over all 4 x 16 tokens with half of the 2 heads (the direct call, then the
    forward's 4 blocks at batch 2), and the cross-attentions over this rank's 32 query tokens."""
    import json

    config = json.loads((fixture_dir / "transformer" / "config.json").read_text())
    heads, head_dim, layers = config["num_attention_heads"], config["attention_head_dim"], config["num_layers"]
    assert (heads, head_dim, layers) == (2, 16, 4)
    for result in results(runs, "ulysses2"):
        assert result["kernel_layout"] == ["RuyiAttnProcessor", "SequenceParallelAttention", "MathAttention", True]
        calls = result["kernel_calls"]
        assert [c for c in calls if c[-1]] == [[1, 1, 64, 16, 1]] + [[2, 1, 64, 16, 1]] * layers
        cross = [c for c in calls if not c[-1]]
        assert len(cross) == 2 * layers and all(c[:3] == [2, 2, 32] for c in cross)


def test_remove_restores_single_process_work(runs, reference):
    for result in results(runs, "cfg2_then_sharded"):
        close(result["removed"], reference[0]["latents"], 1e-4)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_plugins_reduce_over_ranks_and_take_the_same_branches(runs, reference, name):
    """TeaCache's distance and Enhance-A-Video's factor are the global ones on every rank, so all
    skip the same steps; sharded weights hold the LoRA merged before sharding (and the long skips
    parked in CPU RAM change nothing)."""
    ref = reference[0]["plugins_lora" if name == "cfg2_then_sharded" else "plugins"]
    assert ref["skipped"] == [1], "the TeaCache threshold should make the middle step reuse the cache"
    for result in results(runs, name):
        close(result["plugin_forward"], ref["forward"], 1e-5)
        close(result["plugin_latents"], ref["latents"], 1e-4)
        assert result["skipped"] == ref["skipped"]
        assert result["distances"] == pytest.approx(ref["distances"], rel=1e-5)
        assert result["factors"] == pytest.approx(ref["factors"], rel=1e-5)
    same_on_every_rank(runs[name], "plugin_latents")


def test_lora_changes_the_reference(reference):
    """Guards the sharded-LoRA test above: without the merge its latents would differ."""
    ref = reference[0]
    assert not torch.allclose(ref["plugins_lora"]["latents"], ref["plugins"]["latents"], rtol=1e-3, atol=1e-4)
