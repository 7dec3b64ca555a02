"""One block of Ruyi's 3D DiT: diffusers' HunyuanDiT block plus a time table and CLIP cross-attention."""

from __future__ import annotations

import torch
from diffusers.models.activations import GEGLU
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.hunyuan_transformer_2d import HunyuanDiTBlock

from ruyi.models.transformer.processor import RuyiAttention, RuyiAttnProcessor


class RuyiDiTBlock(HunyuanDiTBlock):
    """hidden_states (B, F*h*w, D), tokens frame-major -> same shape.

    Order: [long-skip merge] -> time table along frames -> self-attention (rotary on q and k) ->
    text cross-attention (rotary on q) -> [gated CLIP-image cross-attention] -> feed-forward.
    The parent provides norm1 (timestep shift), attn1, norm2, attn2, norm3, ff, skip_norm/skip_linear.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        *,
        cross_attention_dim: int,
        ff_inner_dim: int,
        activation_fn: str,
        skip: bool,
        time_position_encoding: bool,
        clip_attention: bool,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(
            dim, num_attention_heads, cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
            norm_eps=norm_eps, ff_inner_dim=ff_inner_dim, skip=skip, qk_norm=True,
        )  # fmt: skip
        for layer in (self.attn1, self.attn2):  # built by the parent: same layer, a forward without the signature lookup
            layer.__class__ = RuyiAttention
            layer.set_processor(RuyiAttnProcessor())
        self.t_embed = FramePositionTable(dim) if time_position_encoding else None
        self.attn_clip = None
        if clip_attention:
            self.norm_clip = FP32LayerNorm(dim, norm_eps)
            self.attn_clip = RuyiAttention(
                query_dim=dim, cross_attention_dim=cross_attention_dim, dim_head=dim // num_attention_heads,
                heads=num_attention_heads, qk_norm="layer_norm", eps=1e-6, bias=True,
                processor=RuyiAttnProcessor(),
            )  # fmt: skip
            self.gate_clip = ClipGate(dim)
            self.norm_clip_out = FP32LayerNorm(dim, norm_eps)

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
        """temb (B, D); encoder_hidden_states (B, text tokens, Dc); image_rotary_emb (cos, sin), each
        (F*h*w, head_dim); clip_encoder_hidden_states (B, n_query, Dc), required when the block has
        CLIP attention; skip (B, F*h*w, D) from the mirrored first-half block, required when it has
        a long skip."""
        if self.skip_linear is not None:
            hidden_states = self.skip_linear(self.skip_norm(torch.cat([hidden_states, skip], dim=-1)))
        # the original adds the table only to videos; a single frame passes through unchanged
        if self.t_embed is not None and num_frames != 1:
            hidden_states = self.t_embed(hidden_states, num_frames)

        hidden_states = hidden_states + self.attn1(
            self.norm1(hidden_states, temb), image_rotary_emb=image_rotary_emb, num_frames=num_frames
        )
        hidden_states = hidden_states + self.attn2(
            self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states,
            image_rotary_emb=image_rotary_emb,
        )  # fmt: skip
        if self.attn_clip is not None:
            clip = self.attn_clip(
                self.norm_clip(hidden_states), encoder_hidden_states=clip_encoder_hidden_states,
                image_rotary_emb=image_rotary_emb,
            )  # fmt: skip
            hidden_states = hidden_states + self.norm_clip_out(self.gate_clip(clip))
        return hidden_states + self.ff(self.norm3(hidden_states))


class FramePositionTable(SinusoidalPositionalEmbedding):
    """Adds row f of the table ``pe`` (1, 512, D) to every token of frame f.

    x (B, F*S, D) frame-major -> same shape. ``pe`` starts as diffusers' sinusoid, but the
    checkpoint stores its own (trained) values, which replace it on load.
    """

    def __init__(self, dim: int, max_frames: int = 512) -> None:
        super().__init__(dim, max_seq_length=max_frames)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        # broadcasting over the spatial axis gives the original's per-pixel-sequence addition
        # without transposing the whole activation twice
        frames = x.unflatten(1, (num_frames, -1))
        return (frames + self.pe[0, :num_frames, None]).flatten(1, 2)


class ClipGate(GEGLU):
    """GEGLU on a LayerNorm of its input: x (B, L, D) -> (B, L, D).

    The released weights were trained with this LayerNorm's epsilon equal to the width D (the
    original passes D in the epsilon position); keeping it is what reproduces the outputs.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)
        self.norm = FP32LayerNorm(dim, eps=float(dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(hidden_states))
