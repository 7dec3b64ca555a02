"""The small Ruyi-specific layers of the transformer (everything else comes from diffusers)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import apply_rotary_emb
from torch import nn

from ruyi.models.attention import attention


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (bf16 statistics drift)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class ShiftNorm(nn.Module):
    """``norm(x) + linear(silu(temb))``: the timestep-conditioned norm before self-attention.

    x (B, L, D), temb (B, D) -> (B, L, D).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.norm = FP32LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift = self.linear(F.silu(temb.float()).to(temb.dtype))
        return self.norm(x) + shift[:, None]


class ClipGate(nn.Module):
    """GEGLU-style gate on the CLIP cross-attention output. x (B, L, D) -> (B, L, D).

    The released checkpoint was trained with this norm's epsilon equal to its width (the
    original passed the width in the eps position); it is kept so outputs match.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps=float(dim))
        self.proj = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(self.norm(x)).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FramePositionTable(nn.Module):
    """Learned-from-sinusoid table added along time. x (N, F, D) -> x + pe[:, :F].

    The table is part of the checkpoint (``pe``) and must be loaded, not recomputed.
    """

    def __init__(self, dim: int, max_frames: int = 512) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_frames, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]]


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """(1, length, dim): sin on even channels, cos on odd ones."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, length, dim)
    table[0, :, 0::2] = torch.sin(position * freq)
    table[0, :, 1::2] = torch.cos(position * freq)
    return table


def sincos_grid(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) 2D sin-cos positions: first half encodes rows, second half columns."""
    coords = torch.arange(grid, dtype=torch.float32)
    cols, rows = torch.meshgrid(coords, coords, indexing="xy")

    def axis(values: torch.Tensor, width: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))
        angles = values.reshape(-1, 1).double() * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(cols, dim // 2), axis(rows, dim // 2)], dim=1).float()


class ClipResampler(nn.Module):
    """Perceiver-style resampler: CLIP patch features -> ``n_query`` tokens in text space.

    x (B, tokens, kv_dim) -> (B, n_query, dim). One cross-attention of learned queries (with a 2D
    sin-cos grid) over the features (with the same grid resized bicubically to their count).
    """

    def __init__(self, n_query: int, dim: int, num_heads: int, kv_dim: int) -> None:
        super().__init__()
        self.grid = int(math.isqrt(n_query))
        self.pos_embed = nn.Parameter(sincos_grid(dim, self.grid), requires_grad=False)
        self.query = nn.Parameter(torch.randn(n_query, dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, dim, bias=False) if kv_dim != dim else nn.Identity()
        self.attn = nn.MultiheadAttention(dim, num_heads)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)

    def key_positions(self, tokens: int) -> torch.Tensor:
        side = int(math.isqrt(tokens))
        if side == self.grid:
            return self.pos_embed
        grid = self.pos_embed.float().reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).flatten(0, 2).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key_pos = self.key_positions(x.shape[1])
        x = self.ln_kv(self.kv_proj(x)).transpose(0, 1)  # (tokens, B, dim): MultiheadAttention is seq-first
        query = (self.ln_q(self.query)[:, None] + self.pos_embed[:, None]).expand(-1, x.shape[1], -1)
        out = self.attn(query, x + key_pos[:, None], x, need_weights=False)[0]
        return out.transpose(0, 1)


class RotaryAttnProcessor:
    """diffusers ``Attention`` processor: QK layer-norm, 2D rotary on queries (and keys of
    self-attention), then ``ruyi.models.attention.attention``.

    ``score_hook(query, key)`` (optional) returns a factor the output is multiplied by; it is how
    Enhance-A-Video attaches without a model edit.
    """

    def __init__(self) -> None:
        self.score_hook = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **_: object,
    ) -> torch.Tensor:
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        factor = self.score_hook(query, key) if self.score_hook is not None else None
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb)
            if encoder_hidden_states is None:
                key = apply_rotary_emb(key, image_rotary_emb)
        out = attention(query, key, value, mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if factor is None else out * factor
