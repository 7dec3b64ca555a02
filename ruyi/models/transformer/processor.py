"""The attention processor of every attention layer in the transformer's blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb

from ruyi.models.attention import AttentionBackend, attention


class RuyiAttention(Attention):
    """diffusers' ``Attention`` whose forward hands its arguments to the processor as they are.

    The parent's forward reads the processor's signature (``inspect.signature``) on every call to
    drop keyword arguments the processor does not take; every processor here is a
    :class:`RuyiAttnProcessor`, which takes all that the blocks pass, so the lookup is pure
    overhead (about 1 ms of a 25 ms tiny forward on a CPU). Same parameters, same state dict.
    """

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **kwargs)  # fmt: skip


class RuyiAttnProcessor:
    """For diffusers' ``Attention``: per-head LayerNorm on q and k, 2D rotary on q (and on k in
    self-attention, where keys are image tokens too), then :func:`ruyi.models.attention.attention`.

    hidden_states (B, L, D), encoder_hidden_states (B, Lk, Dc) or None -> (B, L, D). ``num_frames``
    is accepted, not used: the blocks pass it to ``attn1`` for hooks on that layer to read.

    Plugins hook its submodules from outside (Enhance-A-Video: the per-head norms ``norm_q`` /
    ``norm_k``, which see (B, heads, L, head_dim) before rotary, and ``to_out``).
    ``attention_backend`` (None = ``auto``) is where attention strategies attach (``configs/attention/``).
    """

    def __init__(self) -> None:
        self.attention_backend: AttentionBackend | None = None
        self.rotary: Callable[..., torch.Tensor] = apply_rotary_emb  # memory options swap in a leaner one

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        self_attention = encoder_hidden_states is None
        context = hidden_states if self_attention else encoder_hidden_states
        batch = hidden_states.shape[0]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (attn.heads, -1)).transpose(1, 2)

        query = heads(attn.to_q(hidden_states))
        key, value = heads(attn.to_k(context)), heads(attn.to_v(context))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query = self.rotary(query, image_rotary_emb)
            if self_attention:
                key = self.rotary(key, image_rotary_emb)

        out = attention(
            query, key, value, mask=attention_mask, backend=self.attention_backend, self_attention=self_attention
        )
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * value.shape[-1]).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))  # projection, dropout
