"""Enhance-A-Video: scale each self-attention output by how much its tokens attend across frames.

For every spatial position the layer's (q, k) give a frames x frames attention map with the
temperature 1/sqrt(head_dim); the mean of its off-diagonal entries, times ``num_frames + weight``
and clamped to at least 1, multiplies the layer's output. Only the blocks' ``attn1`` are enhanced
(the original applies it there only).

It attaches through diffusers' ``HookRegistry``, per ``attn1``: a hook on the layer reads
``num_frames`` from its call; hooks on its per-head norms ``norm_q`` / ``norm_k`` read the
normalised query and key, (B, heads, L, head_dim), before the rotary, and compute the factor; a
hook after the output projection and its dropout (``to_out[1]``) multiplies the output by it.
Every attention processor of ``attn1`` calls those modules in that order and layout.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import ModelHook

from ruyi.checks import check_int
from ruyi.errors import ConfigError
from ruyi.extension import Extension
from ruyi.hooks import ModuleHooks
from ruyi.registry import PLUGINS

MAX_WEIGHT = 10.0
HOOK = "ruyi.enhance_a_video"


def enhance_factor(
    query: torch.Tensor, key: torch.Tensor, num_frames: int, weight: float,
    across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:  # fmt: skip
    """query, key (B, heads, F*S, head_dim), tokens frame-major -> a 0-dim float32 factor >= 1.

    The attention maps are taken per spatial position S over the F frames, in float32.
    ``across_ranks`` averages the mean over processes holding other positions or batch halves.
    """
    batch, heads, length, head_dim = query.shape
    spatial = length // num_frames

    def per_position(t: torch.Tensor) -> torch.Tensor:  # (B, N, F*S, C) -> (B*S, N, F, C)
        return t.unflatten(2, (num_frames, spatial)).permute(0, 3, 1, 2, 4).flatten(0, 1)

    scores = (per_position(query) * head_dim**-0.5) @ per_position(key).transpose(-2, -1)
    probs = scores.float().softmax(dim=-1).reshape(-1, num_frames, num_frames)
    off_diagonal = probs.masked_fill(torch.eye(num_frames, dtype=torch.bool, device=probs.device), 0)
    mean_cross_frame = off_diagonal.sum(dim=(1, 2)) / (num_frames * num_frames - num_frames)
    mean = mean_cross_frame.mean() if across_ranks is None else across_ranks(mean_cross_frame.mean())
    return (mean * (num_frames + weight)).clamp(min=1)


class _LayerState:
    """One ``attn1`` call as its hooks see it: frames, then query, then the factor."""

    def __init__(self) -> None:
        self.num_frames = 1
        self.query: torch.Tensor | None = None
        self.factor: torch.Tensor | None = None
        self.measuring = False


class _Call(ModelHook):
    """On ``attn1``: whether this call is enhanced; clears the layer's state after it."""

    def __init__(self, plugin: EnhanceAVideo, state: _LayerState) -> None:
        super().__init__()
        self.plugin, self.state = plugin, state

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        num_frames = kwargs.get("num_frames", 1)
        self.state.num_frames = num_frames
        self.state.measuring = self.plugin.active and num_frames >= 2
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.state.query, self.state.factor, self.state.measuring = None, None, False
        return output


class _Query(ModelHook):
    """On ``attn1.norm_q``: keeps the normalised query (B, heads, L, head_dim) for the key's hook."""

    def __init__(self, state: _LayerState) -> None:
        super().__init__()
        self.state = state

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        if self.state.measuring:
            self.state.query = output
        return output


class _Key(ModelHook):
    """On ``attn1.norm_k``: the factor from the kept query and this normalised key."""

    def __init__(self, plugin: EnhanceAVideo, state: _LayerState) -> None:
        super().__init__()
        self.plugin, self.state = plugin, state

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state.measuring and state.query is not None:
            state.factor = self.plugin.factor(state.query, output, state.num_frames)
            state.query = None
        return output


class _Scale(ModelHook):
    """On ``attn1.to_out[1]`` (the dropout after the output projection): output x factor."""

    def __init__(self, state: _LayerState) -> None:
        super().__init__()
        self.state = state

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        factor, self.state.factor = self.state.factor, None
        return output if factor is None else output * factor


@PLUGINS.register("enhance_a_video")
class EnhanceAVideo(Extension):
    """``weight`` in [0, 10): larger strengthens cross-frame consistency (keep it < 5 for short or
    low-resolution videos); ``weight=0`` attaches nothing. Single-frame inputs are left alone (no
    cross-frame attention to measure).

    Model calls ``skip_start_steps <= call < steps - skip_end_steps`` are enhanced, the others
    run unchanged. As in the original, whose counter counts transformer calls and compares them
    with the user's steps: a sampler that evaluates once per step skips the first and last steps;
    PNDM (13 calls for 4 steps) enhances only calls below ``steps - skip_end_steps``.
    """

    stage = "plugins"

    reads_whole_batch = True  # its statistic averages the whole CFG batch (memory=cfg_split refuses it)

    def __init__(self, *, weight: float = 1.0, skip_start_steps: int = 0, skip_end_steps: int = 0) -> None:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < MAX_WEIGHT:
            raise ConfigError(f"plugin.enhance_a_video.weight={weight!r} must be a number in [0, {MAX_WEIGHT:g}) (try 1-4)")
        self.weight = float(weight)
        self.skip_start_steps = check_int("plugin.enhance_a_video.skip_start_steps", skip_start_steps, low=0)
        self.skip_end_steps = check_int("plugin.enhance_a_video.skip_end_steps", skip_end_steps, low=0)
        self.active = True  # outside a denoising loop every forward is enhanced
        self.across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None  # set by ruyi.parallel
        self._hooks = ModuleHooks(HOOK)

    def __repr__(self) -> str:
        return (f"EnhanceAVideo(weight={self.weight}, skip_start_steps={self.skip_start_steps}, "
                f"skip_end_steps={self.skip_end_steps})")  # fmt: skip

    def apply(self, pipe) -> None:
        if self.weight == 0:
            return  # disabled: no hook, no cost
        layers = [block.attn1 for block in pipe.transformer.blocks]
        if any(ModuleHooks.present(attn, HOOK) for attn in layers):
            raise ValueError("the transformer already has Enhance-A-Video attached; remove it first")
        for attn in layers:
            state = _LayerState()
            hooks = ((attn, _Call(self, state)), (attn.norm_q, _Query(state)), (attn.norm_k, _Key(self, state)),
                     (attn.to_out[1], _Scale(state)))  # fmt: skip
            for module, hook in hooks:
                self._hooks.register(module, hook)
        pipe.callbacks.append(self)

    def remove(self, pipe) -> None:
        self._hooks.remove()
        if self in pipe.callbacks:
            pipe.callbacks.remove(self)

    def on_step_begin(self, state) -> None:
        self.active = self.skip_start_steps <= state.call < state.num_steps - self.skip_end_steps

    def on_loop_end(self, state) -> None:
        self.active = True

    def factor(self, query: torch.Tensor, key: torch.Tensor, num_frames: int) -> torch.Tensor:
        """query, key (B, heads, F*S, head_dim) -> the factor for the layer's output (0-dim, >= 1)."""
        return enhance_factor(query, key, num_frames, self.weight, self.across_ranks)
