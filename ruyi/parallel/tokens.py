"""Split the transformer's tokens over the sequence-parallel ranks, and put them back together.

Tokens are frame-major, (B, F*S, D) with S = h*w patches per frame. Every rank keeps all F frames
and 1/n of each frame's patches (a band of patch rows when n divides h), so the frame table, the
per-frame Enhance-A-Video maps and every token-wise layer run unchanged on the slice; only the
self-attention exchanges data (``ruyi.parallel.attention``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ruyi.errors import ConfigError
from ruyi.parallel.groups import ParallelGroups


def shard_tokens(tokens: torch.Tensor, num_frames: int, parts: int, index: int) -> torch.Tensor:
    """(..., F*S, D) -> (..., F*S/parts, D): slice ``index`` of every frame's S tokens."""
    per_frame = tokens.shape[-2] // num_frames
    if per_frame % parts:
        valid = [n for n in range(1, min(per_frame, 8) + 1) if per_frame % n == 0]
        raise ConfigError(
            f"the video's {per_frame} tokens per frame do not split over {parts} sequence-parallel ranks; "
            f"pick a video size whose token count (height/16 x width/16) is divisible by {parts}, "
            f"or ring x ulysses in {valid}"
        )
    frames = tokens.unflatten(-2, (num_frames, per_frame))
    return frames.chunk(parts, dim=-2)[index].flatten(-3, -2)


def gather_tokens(tokens: torch.Tensor, num_frames: int, group: dist.ProcessGroup) -> torch.Tensor:
    """Inverse of :func:`shard_tokens` over ``group``: (B, F*S/n, D) on each rank -> (B, F*S, D) on all."""
    tokens = tokens.contiguous()
    pieces = [torch.empty_like(tokens) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, tokens, group=group)
    return torch.cat([p.unflatten(1, (num_frames, -1)) for p in pieces], dim=2).flatten(1, 2)


class SpatialShard:
    """A transformer ``blocks_runner`` that runs the block stack on this rank's token slice.

    It wraps the runner that was there (TeaCache, or none), which therefore sees the slice too and
    reduces its statistic over the ranks (``across_ranks``). The rotary table is sliced the same way
    as the tokens; the output is gathered so the layers after the stack see every token.
    """

    def __init__(self, groups: ParallelGroups, inner: Callable[..., torch.Tensor] | None = None) -> None:
        self.groups = groups
        self.inner = inner

    def __repr__(self) -> str:
        return f"SpatialShard({self.groups.degrees}, inner={self.inner!r})"

    def __call__(self, run_blocks: Callable[..., torch.Tensor], hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        frames = kwargs["num_frames"]
        parts, index = self.groups.degrees.sequence, self.groups.sequence_rank
        hidden_states = shard_tokens(hidden_states, frames, parts, index)
        kwargs["image_rotary_emb"] = tuple(shard_tokens(t, frames, parts, index) for t in kwargs["image_rotary_emb"])
        if self.inner is None:
            out = run_blocks(hidden_states, **kwargs)
        else:
            out = self.inner(run_blocks, hidden_states, **kwargs)
        return gather_tokens(out, frames, self.groups.sequence_group)
