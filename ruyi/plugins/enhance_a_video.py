"""Enhance-A-Video: scale each self-attention output by how much its tokens attend across frames.

For every spatial position the layer's (q, k) give a frames x frames attention map with the
temperature 1/sqrt(head_dim); the mean of its off-diagonal entries, times ``num_frames + weight``
and clamped to at least 1, multiplies the layer's output. It hooks only the blocks' ``attn1``
(the original applies it there only) through ``RuyiAttnProcessor.score_hook``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from ruyi.checks import check_int
from ruyi.errors import ConfigError
from ruyi.extension import Extension
from ruyi.registry import PLUGINS

MAX_WEIGHT = 10.0


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
            raise ConfigError(f"enhance_a_video.weight={weight!r} must be a number in [0, {MAX_WEIGHT:g}) (try 1-4)")
        self.weight = float(weight)
        self.skip_start_steps = check_int("enhance_a_video.skip_start_steps", skip_start_steps, low=0)
        self.skip_end_steps = check_int("enhance_a_video.skip_end_steps", skip_end_steps, low=0)
        self.active = True  # outside a denoising loop every forward is enhanced
        self.across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None  # set by ruyi.parallel
        self._processors: list = []

    def __repr__(self) -> str:
        return (f"EnhanceAVideo(weight={self.weight}, skip_start_steps={self.skip_start_steps}, "
                f"skip_end_steps={self.skip_end_steps})")  # fmt: skip

    def apply(self, pipe) -> None:
        if self.weight == 0:
            return  # disabled: no hook, no cost
        processors = [block.attn1.processor for block in pipe.transformer.blocks]
        taken = [p for p in processors if p.score_hook is not None]
        if taken:
            raise ValueError(f"{len(taken)} self-attention layers already have a score_hook; detach it first")
        for processor in processors:
            processor.score_hook = self
        self._processors = processors
        pipe.callbacks.append(self)

    def remove(self, pipe) -> None:
        for processor in self._processors:
            if processor.score_hook is self:
                processor.score_hook = None
        self._processors = []
        if self in pipe.callbacks:
            pipe.callbacks.remove(self)

    def on_step_begin(self, state) -> None:
        self.active = self.skip_start_steps <= state.call < state.num_steps - self.skip_end_steps

    def on_loop_end(self, state) -> None:
        self.active = True

    def __call__(self, query: torch.Tensor, key: torch.Tensor, num_frames: int) -> torch.Tensor | None:
        """The score hook: a factor for the layer's output, or None to leave it unchanged."""
        if not self.active or num_frames < 2:
            return None
        return enhance_factor(query, key, num_frames, self.weight, self.across_ranks)
