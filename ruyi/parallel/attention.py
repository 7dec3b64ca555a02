"""Self-attention over tokens split across ranks: the model's own processor, with an exchange
around its attention kernel.

Each rank holds a slice of every frame's tokens. The transformer's processor still does all of the
layer's math on that slice (projections, the per-head norms, the rotary embedding, its score hook);
only the call to its attention backend changes. :class:`SequenceParallelAttention` is an attention
backend that holds the processor's own backend (``attention=``, or ``auto``): it all-to-alls q, k
and v from (all heads, a slice of the tokens) to (a slice of the heads, all tokens), lets that
backend compute, and swaps back. Only ``attn1`` needs this: the text and CLIP cross-attentions see
every key on every rank already.

Ring attention (``parallel.ring``) needs kernels that also return the softmax normaliser, which
ruyi's backends do not; with ``ring > 1`` the exchange and the kernel are diffusers'
context-parallel attention (its ``native`` backend, CUDA only), so there ``attention=`` does not
choose the self-attention's kernel.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist

from ruyi.models.attention import DEFAULT_BACKEND

RING_BACKEND = "native"  # diffusers' torch-SDPA backend; its ring step needs CUDA kernels


def _all_to_all(chunks: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """chunks (n, ...): chunk j goes to rank j of ``group``; returns (n, ...) with rank j's chunk at j."""
    import torch.distributed._functional_collectives as funcol

    out = funcol.all_to_all_single(chunks.contiguous(), None, None, group)
    return out.wait() if isinstance(out, funcol.AsyncCollectiveTensor) else out


def tokens_to_heads(x: torch.Tensor, group: dist.ProcessGroup, parts: int) -> torch.Tensor:
    """(B, H, L_local, D) on each rank -> (B, H/parts, parts*L_local, D): this rank's heads, every
    rank's tokens (rank 0's first)."""
    b, h, tokens, d = x.shape
    chunks = x.reshape(b, parts, h // parts, tokens, d).transpose(0, 1)  # head group j for rank j
    return _all_to_all(chunks, group).permute(1, 2, 0, 3, 4).reshape(b, h // parts, parts * tokens, d)


def heads_to_tokens(x: torch.Tensor, group: dist.ProcessGroup, parts: int) -> torch.Tensor:
    """Inverse of :func:`tokens_to_heads`: (B, H/parts, parts*L_local, D) -> (B, H, L_local, D)."""
    b, h, tokens, d = x.shape
    chunks = x.reshape(b, h, parts, tokens // parts, d).permute(2, 0, 1, 3, 4)  # rank j's tokens for rank j
    return _all_to_all(chunks, group).transpose(0, 1).reshape(b, parts * h, tokens // parts, d)


class SequenceParallelAttention:
    """An attention backend around another one (``attention_backend``; None = ``auto``), for the
    self-attention of tokens split over the ``parts`` ranks of ``group``.

    ``compute`` takes (B, H, L_local, D) q, k, v as any backend does; the wrapped backend sees
    (B, H/parts, L, D) and never knows. Cross-attention passes straight through (its keys are whole
    on every rank); a masked self-attention is refused (no mask over a rank's slice exists here).
    ``ring_config`` (diffusers' set-up ``ParallelConfig``) hands the whole call to diffusers' ring
    attention instead (see the module docstring).

    Class fact ``wraps_attention_backend``: an attention strategy attached later
    (``ruyi.models.attention.set_attention_backend``) replaces the backend inside, not this.
    """

    wraps_attention_backend: ClassVar[bool] = True

    def __init__(self, attention_backend: Any, *, group: dist.ProcessGroup, parts: int, ring_config: Any = None) -> None:
        self.attention_backend = attention_backend
        self.group, self.parts, self.ring_config = group, parts, ring_config

    def __repr__(self) -> str:
        mode = "ring" if self.ring_config is not None else f"ulysses over {self.parts}"
        return f"SequenceParallelAttention({mode}, around {self.inner!r})"

    @property
    def inner(self) -> Any:
        return DEFAULT_BACKEND if self.attention_backend is None else self.attention_backend

    @property
    def pad_head_dim(self) -> int:
        # the dispatch pads before calling compute, so the exchange moves what the kernel will read
        return self.inner.pad_head_dim

    def prepare(self, device: torch.device) -> None:
        self.inner.prepare(device)

    def compute(self, query, key, value, *, mask, scale, self_attention):
        if not self_attention:
            return self.inner.compute(query, key, value, mask=mask, scale=scale, self_attention=False)
        if mask is not None:
            raise NotImplementedError("sequence-parallel self-attention takes no mask: its keys are split over the ranks")
        if self.ring_config is not None:
            return self._ring(query, key, value, scale=scale)
        if query.shape == key.shape == value.shape:  # one exchange for all three
            stacked = tokens_to_heads(torch.cat((query, key, value)), self.group, self.parts)
            query, key, value = stacked.chunk(3)
        else:
            query, key, value = (tokens_to_heads(t, self.group, self.parts) for t in (query, key, value))
        out = self.inner.compute(query, key, value, mask=None, scale=scale, self_attention=True)
        return heads_to_tokens(out, self.group, self.parts)

    def _ring(self, query, key, value, *, scale):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        # diffusers works on (B, L, H, D)
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        out = dispatch_attention_fn(q, k, v, scale=scale, backend=RING_BACKEND, parallel_config=self.ring_config)
        return out.transpose(1, 2)


def context_parallel_config(mesh, *, ring: int, ulysses: int, device: torch.device):
    """diffusers' ``ParallelConfig`` for the mesh's ``ring`` and ``ulysses`` dimensions, set up.

    The bare ``ContextParallelConfig`` is not enough: diffusers reads the ring/ulysses sub-meshes
    that only ``ParallelConfig.setup`` creates.
    """
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig

    config = ParallelConfig(context_parallel_config=ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, mesh=mesh))
    config.setup(dist.get_rank(), dist.get_world_size(), device, mesh=mesh)
    return config


def wrap_self_attention(blocks, *, group: dist.ProcessGroup, parts: int, ring_config: Any = None) -> list:
    """Put every block's ``attn1`` backend inside a :class:`SequenceParallelAttention`; returns the
    processors, in block order (for :func:`unwrap_self_attention`)."""
    processors = []
    for block in blocks:
        processor = block.attn1.processor
        processor.attention_backend = SequenceParallelAttention(
            processor.attention_backend, group=group, parts=parts, ring_config=ring_config
        )
        processors.append(processor)
    return processors


def unwrap_self_attention(processors: list) -> None:
    """Give each processor the backend its wrapper holds now (an ``attention=`` chosen meanwhile included)."""
    for processor in processors:
        wrapper = processor.attention_backend
        if getattr(wrapper, "wraps_attention_backend", False):
            processor.attention_backend = wrapper.attention_backend
