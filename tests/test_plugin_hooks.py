"""TeaCache and Enhance-A-Video attach through diffusers hooks: with every offload strategy, before
or after an offload's own hooks, and removable without a trace. Tiny model on the CPU; the ``gpu``
tests repeat the offload cases where weights really move (``-m gpu``)."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook

from ruyi.assembly import load_pipeline
from ruyi.extension import attached
from ruyi.io import procedural_image
from ruyi.plugins import EnhanceAVideo, TeaCache

KW = dict(frames=8, video_size=[64, 64], steps=6, seed=3, progress=False, output_latents=True)
# measured on the fixture: calls 1, 3 and 4 of 6 reuse the cache, so the run passes from computed
# to cached and back twice
TEACACHE = dict(threshold=0.3, skip_start_steps=1, skip_end_steps=1)
SKIPPED = [1, 3, 4]
OFFLOADS = {
    "group": dict(offload="group", offload_kwargs=dict(use_stream=False)),
    "group3": dict(offload="group", offload_kwargs=dict(use_stream=False, blocks_per_group=3)),
    "model": dict(offload="model"),
    "sequential": dict(offload="sequential"),
}


def hook_names(pipe) -> set[str]:
    """Every diffusers hook name registered anywhere in the transformer."""
    registries = (getattr(m, "_diffusers_hook", None) for m in pipe.transformer.modules())
    return {name for registry in registries if registry is not None for name in registry.hooks}


def _run(pipe) -> torch.Tensor:
    return pipe(procedural_image(64, 64), **KW).float().cpu()


def _cached_run(fixture_dir, device: str = "cpu", **options) -> tuple[torch.Tensor, list[int]]:
    """TeaCache attached by the assembly (before any offload hook)."""
    cache = TeaCache(**TEACACHE)
    pipe = load_pipeline(fixture_dir, device=device, plugins=[cache], **options)
    return _run(pipe), cache.skipped


@pytest.fixture(scope="module")
def reference(fixture_dir) -> tuple[torch.Tensor, list[int]]:
    latents, skipped = _cached_run(fixture_dir)
    assert skipped == SKIPPED
    return latents, skipped


@pytest.fixture(scope="module")
def plain_pipe(fixture_dir):
    return load_pipeline(fixture_dir)


@pytest.mark.parametrize("name", list(OFFLOADS))
def test_teacache_with_offload_equals_teacache_without(fixture_dir, reference, name):
    latents, skipped = _cached_run(fixture_dir, **OFFLOADS[name])
    assert skipped == reference[1]
    torch.testing.assert_close(latents, reference[0], rtol=1e-5, atol=1e-6)


def test_teacache_attached_after_group_offload_equals_attached_before(fixture_dir, reference):
    """A per-run plugin (ComfyUI's) registers its hooks on top of the offload's; then removed,
    only the offload's hooks stay."""
    pipe = load_pipeline(fixture_dir, **OFFLOADS["group"])
    offload_hooks = hook_names(pipe)
    cache = TeaCache(**TEACACHE)
    with attached(pipe, [cache]):
        assert hook_names(pipe) > offload_hooks
        latents = _run(pipe)
    assert cache.skipped == reference[1] and hook_names(pipe) == offload_hooks and not pipe.callbacks
    torch.testing.assert_close(latents, reference[0], rtol=1e-5, atol=1e-6)


class _Tracer(ModelHook):
    """Stands for group offloading's layer tracers: registered first, removed after a call."""


def test_teacache_survives_removal_of_a_hook_registered_before_it(plain_pipe, reference):
    blocks = list(plain_pipe.transformer.blocks)
    for block in blocks:
        HookRegistry.check_if_exists_or_initialize(block).register_hook(_Tracer(), "tracer")
    cache = TeaCache(**TEACACHE)
    cache.apply(plain_pipe)
    try:
        for block in blocks:
            block._diffusers_hook.remove_hook("tracer", recurse=False)
        latents = _run(plain_pipe)
    finally:
        cache.remove(plain_pipe)
    assert cache.skipped == reference[1]
    torch.testing.assert_close(latents, reference[0], rtol=0, atol=0)


def test_remove_takes_every_hook_off(plain_pipe):
    never_attached = _run(plain_pipe)
    cache, enhance = TeaCache(**TEACACHE), EnhanceAVideo(weight=2.0)
    with attached(plain_pipe, [cache, enhance]):
        assert {"ruyi.teacache", "ruyi.enhance_a_video"} <= hook_names(plain_pipe)
        assert not torch.allclose(_run(plain_pipe), never_attached, atol=1e-3)
    assert not hook_names(plain_pipe) and not plain_pipe.callbacks
    assert torch.equal(_run(plain_pipe), never_attached)


def test_a_second_attach_is_refused(plain_pipe):
    for first, second in ((TeaCache(), TeaCache()), (EnhanceAVideo(), EnhanceAVideo())):
        first.apply(plain_pipe)
        try:
            with pytest.raises(ValueError, match="already has .* attached; remove it first"):
                second.apply(plain_pipe)
        finally:
            first.remove(plain_pipe)
    assert not hook_names(plain_pipe)


def test_plugins_inside_compiled_blocks_match_eager(fixture_dir):
    """Their hooks run inside each block's compiled graph (aot_eager traces what inductor gets);
    TeaCache's decision runs eagerly between two pieces of the first block's graph."""

    def run(strategies=None):
        cache = TeaCache(**TEACACHE)
        pipe = load_pipeline(fixture_dir, plugins=[cache, EnhanceAVideo(weight=2.0)], strategies=strategies)
        return _run(pipe), cache.skipped

    eager, skipped = run()
    torch._dynamo.reset()
    compiled, compiled_skipped = run({"compile": ("regional", {"backend": "aot_eager"})})
    assert skipped and compiled_skipped == skipped
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


# -- on a GPU: the weights really move --------------------------------------------------------
GPU_OFFLOADS = {
    "group_stream": dict(offload="group", offload_kwargs=dict(use_stream=True)),
    "group_stream_3": dict(offload="group", offload_kwargs=dict(use_stream=True, blocks_per_group=3)),
    "group_sync": dict(offload="group", offload_kwargs=dict(use_stream=False)),
    "model": dict(offload="model"),
    "sequential": dict(offload="sequential"),
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def gpu_reference(fixture_dir):
    return _cached_run(fixture_dir, "cuda")


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    error = ((got - want).norm() / want.norm()).item()
    assert error <= 1e-6, f"relative error {error:.2e}"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(GPU_OFFLOADS))
@pytest.mark.parametrize("order", ["before", "after"])
def test_teacache_with_offload_on_cuda(fixture_dir, gpu_reference, name, order):
    options = GPU_OFFLOADS[name]
    if order == "before":  # the assembly's order: plugins first, offload hooks on top
        latents, skipped = _cached_run(fixture_dir, "cuda", **options)
    else:  # ComfyUI's per-run plugins: on top of the offload's hooks, first call included
        pipe, cache = load_pipeline(fixture_dir, device="cuda", **options), TeaCache(**TEACACHE)
        with attached(pipe, [cache]):
            latents, skipped = _run(pipe), cache.skipped
    assert skipped == gpu_reference[1]
    _close(latents, gpu_reference[0])
