"""Self-attention over tokens split across ranks, through diffusers' context-parallel attention.

Each rank holds a slice of every frame's tokens. In Ulysses mode diffusers all-to-alls q, k and v
from (all heads, a slice of the tokens) to (a slice of the heads, all tokens), runs the attention
kernel and swaps back; ring mode passes key/value blocks around instead (CUDA kernels only).
Only ``attn1`` needs this: the text and CLIP cross-attentions see every key on every rank already.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb

from ruyi.models.transformer.processor import RuyiAttnProcessor


class SequenceParallelAttnProcessor:
    """Stands in for a block's ``RuyiAttnProcessor`` on ``attn1`` while tokens are sharded.

    hidden_states (B, L_local, D) -> (B, L_local, D). The layer math is the wrapped processor's
    (per-head LayerNorm on q and k, 2D rotary on both, output projection); the rotary table handed
    in must already be this rank's slice.
    """

    def __init__(self, inner: RuyiAttnProcessor, *, parallel_config, backend: str = "native") -> None:
        self.inner = inner
        self.parallel_config = parallel_config
        self.backend = backend

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            # keys that every rank holds whole need no exchange
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, num_frames)
        # diffusers' dispatch works on (B, L, heads, head_dim): split heads without transposing
        q, k, v = (proj(hidden_states).unflatten(-1, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        # the per-head norms see (B, heads, L, head_dim), as in RuyiAttnProcessor, for hooks that read them
        if attn.norm_q is not None:
            q = attn.norm_q(q.transpose(1, 2)).transpose(1, 2)
        if attn.norm_k is not None:
            k = attn.norm_k(k.transpose(1, 2)).transpose(1, 2)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        out = dispatch_attention_fn(q, k, v, backend=self.backend, parallel_config=self.parallel_config)
        return attn.to_out[1](attn.to_out[0](out.flatten(2).to(q.dtype)))


def context_parallel_config(mesh, *, ring: int, ulysses: int, device: torch.device):
    """diffusers' ``ParallelConfig`` for the mesh's ``ring`` and ``ulysses`` dimensions, set up.

    The bare ``ContextParallelConfig`` is not enough: diffusers reads the ring/ulysses sub-meshes
    that only ``ParallelConfig.setup`` creates.
    """
    import torch.distributed as dist
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    config = ParallelConfig(context_parallel_config=ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, mesh=mesh))
    config.setup(dist.get_rank(), dist.get_world_size(), device, mesh=mesh)
    return config


def attach_sequence_parallel_attention(blocks, parallel_config, *, backend: str) -> list:
    """Wrap every block's ``attn1`` processor; returns the previous processors, in block order."""
    previous = []
    for block in blocks:
        previous.append(block.attn1.processor)
        block.attn1.set_processor(SequenceParallelAttnProcessor(block.attn1.processor, parallel_config=parallel_config, backend=backend))
    return previous


def detach_sequence_parallel_attention(blocks, previous: list) -> None:
    for block, processor in zip(blocks, previous, strict=True):
        block.attn1.set_processor(processor)
