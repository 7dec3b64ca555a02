"""Split the transformer's tokens over the sequence-parallel ranks, and put them back together.

Tokens are frame-major, (B, F*S, D) with S = h*w patches per frame. Every rank keeps all F frames
and 1/n of each frame's patches (a band of patch rows when n divides h), so the frame table, the
per-frame Enhance-A-Video maps and every token-wise layer run unchanged on the slice; only the
self-attention exchanges data (``ruyi.parallel.attention``).

:class:`TokenShard` does it with diffusers hooks on three modules of the transformer, nothing in the
model file: the patch embedding's output (B*F, S, D) is cut along S, the one-frame rotary table
(S, head_dim) going into ``forward`` is cut the same way, and the output projection's tokens are
gathered back, so the final unpatchify sees every token.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from diffusers.hooks import ModelHook

from ruyi.errors import ConfigError
from ruyi.hooks import ModuleHooks
from ruyi.parallel.groups import ParallelGroups

HOOK = "ruyi_parallel_tokens"  # the hooks' name in each module's HookRegistry


def shard_tokens(tokens: torch.Tensor, num_frames: int, parts: int, index: int) -> torch.Tensor:
    """(..., F*S, D) -> (..., F*S/parts, D): slice ``index`` of every frame's S tokens."""
    per_frame = tokens.shape[-2] // num_frames
    frames = tokens.unflatten(-2, (num_frames, per_frame))
    return _slice(frames, -2, parts, index).flatten(-3, -2)


def gather_tokens(tokens: torch.Tensor, num_frames: int, group: dist.ProcessGroup) -> torch.Tensor:
    """Inverse of :func:`shard_tokens` over ``group``: (B, F*S/n, D) on each rank -> (B, F*S, D) on all."""
    tokens = tokens.contiguous()
    pieces = [torch.empty_like(tokens) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, tokens, group=group)
    return torch.cat([p.unflatten(1, (num_frames, -1)) for p in pieces], dim=2).flatten(1, 2)


def _slice(tensor: torch.Tensor, dim: int, parts: int, index: int) -> torch.Tensor:
    per_frame = tensor.shape[dim]
    if per_frame % parts:
        valid = [n for n in range(1, min(per_frame, 8) + 1) if per_frame % n == 0]
        raise ConfigError(
            f"the video's {per_frame} tokens per frame do not split over {parts} sequence-parallel ranks; "
            f"pick a video size whose tokens per frame divide by {parts}, or ring x ulysses in {valid}"
        )
    return tensor.chunk(parts, dim=dim)[index]


class _Call(ModelHook):
    """On the transformer: notes the call's frame count, cuts the rotary table (S, head_dim)."""

    def __init__(self, shard: TokenShard) -> None:
        super().__init__()
        self.shard = shard

    def pre_forward(self, module, *args, **kwargs):
        latents = args[0] if args else kwargs["hidden_states"]  # (B, C, F, H, W)
        self.shard.frames = latents.shape[2]
        kwargs["image_rotary_emb"] = tuple(self.shard.take(t, 0) for t in kwargs["image_rotary_emb"])
        return args, kwargs


class _Split(ModelHook):
    """On the patch embedding: (B*F, S, D) -> (B*F, S/n, D)."""

    def __init__(self, shard: TokenShard) -> None:
        super().__init__()
        self.shard = shard

    def post_forward(self, module, output):
        return self.shard.take(output, 1)


class _Gather(ModelHook):
    """On the output projection: (B, F*S/n, C) on each rank -> (B, F*S, C) on every rank."""

    def __init__(self, shard: TokenShard) -> None:
        super().__init__()
        self.shard = shard

    def post_forward(self, module, output):
        return gather_tokens(output, self.shard.frames, self.shard.groups.sequence_group)


class TokenShard:
    """Runs the transformer's token-wise layers and blocks on this rank's slice of every frame.

    ``attach(transformer)`` / ``detach()``. Whatever runs the block stack (TeaCache's runner
    included) sees the slice, so statistics over tokens must be reduced over the ranks
    (``across_ranks``).
    """

    def __init__(self, groups: ParallelGroups) -> None:
        self.groups = groups
        self.frames = 0  # of the forward in progress, for the gather
        self._hooks = ModuleHooks(HOOK)

    def __repr__(self) -> str:
        return f"TokenShard({self.groups.degrees})"

    def take(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        return _slice(tensor, dim, self.groups.degrees.sequence, self.groups.sequence_rank)

    def attach(self, transformer: torch.nn.Module) -> TokenShard:
        hooks = ((transformer, _Call(self)), (transformer.pos_embed, _Split(self)), (transformer.proj_out, _Gather(self)))
        for module, hook in hooks:
            self._hooks.register(module, hook)
        return self

    def detach(self) -> None:
        self._hooks.remove()
