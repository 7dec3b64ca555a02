"""One transformer block of Ruyi's 3D DiT (HunyuanDiT block + time table + CLIP cross-attention)."""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

from ruyi.models.transformer.layers import ClipGate, FP32LayerNorm, FramePositionTable, RotaryAttnProcessor, ShiftNorm


def _attention(dim: int, heads: int, context_dim: int | None) -> Attention:
    return Attention(
        query_dim=dim, cross_attention_dim=context_dim, dim_head=dim // heads, heads=heads,
        qk_norm="layer_norm", eps=1e-6, bias=True, processor=RotaryAttnProcessor(),
    )  # fmt: skip


class RuyiDiTBlock(nn.Module):
    """hidden_states (B, F*h*w, D) frame-major -> same shape.

    Order: [long skip merge] -> time table along frames -> self-attention (rotary on q, k) ->
    text cross-attention (rotary on q) -> [gated CLIP cross-attention] -> feed-forward.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        cross_attention_dim: int,
        ff_inner_dim: int,
        activation_fn: str,
        long_skip: bool,
        time_position_encoding: bool,
        clip_attention: bool,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = ShiftNorm(dim, eps)
        self.t_embed = FramePositionTable(dim) if time_position_encoding else None
        self.attn1 = _attention(dim, heads, None)
        self.norm2 = FP32LayerNorm(dim, eps)
        self.attn2 = _attention(dim, heads, cross_attention_dim)
        if clip_attention:
            self.norm_clip = FP32LayerNorm(dim, eps)
            self.attn_clip = _attention(dim, heads, cross_attention_dim)
            self.gate_clip = ClipGate(dim)
            self.norm_clip_out = FP32LayerNorm(dim, eps)
        self.clip_attention = clip_attention
        self.norm3 = FP32LayerNorm(dim, eps)
        self.ff = FeedForward(dim, activation_fn=activation_fn, inner_dim=ff_inner_dim, bias=True)
        if long_skip:
            self.skip_norm = FP32LayerNorm(2 * dim, eps)
            self.skip_linear = nn.Linear(2 * dim, dim)
        self.long_skip = long_skip

    def forward(
        self,
        hidden_states: torch.Tensor,
        *,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
        num_frames: int,
        clip_encoder_hidden_states: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """temb (B, D); encoder_hidden_states (B, text tokens, Dc); rotary tables (h*w, head_dim)
        for one frame; skip (B, F*h*w, D) from the mirrored block of the first half."""
        if self.long_skip:
            hidden_states = self.skip_linear(self.skip_norm(torch.cat([hidden_states, skip], dim=-1)))
        if num_frames != 1:
            image_rotary_emb = tuple(t.repeat(num_frames, 1) for t in image_rotary_emb)
            if self.t_embed is not None:
                hidden_states = rearrange(hidden_states, "b (f d) c -> (b d) f c", f=num_frames)
                hidden_states = self.t_embed(hidden_states)
                hidden_states = rearrange(hidden_states, "(b d) f c -> b (f d) c", b=temb.shape[0])
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states, temb), image_rotary_emb=image_rotary_emb)
        hidden_states = hidden_states + self.attn2(
            self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states, image_rotary_emb=image_rotary_emb
        )
        if self.clip_attention and clip_encoder_hidden_states is not None:
            clip_out = self.attn_clip(
                self.norm_clip(hidden_states), encoder_hidden_states=clip_encoder_hidden_states,
                image_rotary_emb=image_rotary_emb,
            )  # fmt: skip
            hidden_states = hidden_states + self.norm_clip_out(self.gate_clip(clip_out))
        return hidden_states + self.ff(self.norm3(hidden_states))
