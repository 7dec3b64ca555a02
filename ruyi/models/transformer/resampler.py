"""Projection of CLIP image features into the transformer's text space (``clip_projection``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from torch import nn


class ClipResampler(nn.Module):
    """Perceiver-style resampler: x (B, tokens, kv_dim) -> (B, n_query, dim).

    ``n_query`` learned queries (a square grid) cross-attend once over the CLIP patch features.
    Both sides carry 2D sin-cos positions: the queries their grid's (``pos_embed``, stored in the
    checkpoint), the features the same table resized bicubically to their own square grid.
    """

    def __init__(self, n_query: int, dim: int, num_heads: int, kv_dim: int) -> None:
        super().__init__()
        self.grid = math.isqrt(n_query)
        if self.grid * self.grid != n_query:
            raise ValueError(f"n_query={n_query} must be a square number (a grid of queries)")
        table = get_2d_sincos_pos_embed(dim, self.grid, base_size=self.grid, output_type="pt")
        self.pos_embed = nn.Parameter(table.to(torch.get_default_dtype()), requires_grad=False)
        self.query = nn.Parameter(torch.randn(n_query, dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, dim, bias=False) if kv_dim != dim else nn.Identity()
        self.attn = nn.MultiheadAttention(dim, num_heads)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)

    def key_positions(self, tokens: int) -> torch.Tensor:
        """(tokens, dim): the query grid's table, resized to a sqrt(tokens) square grid."""
        side = math.isqrt(tokens)
        if side == self.grid:
            return self.pos_embed
        grid = self.pos_embed.float().reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).flatten(0, 2).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key_pos = self.key_positions(x.shape[1])
        # (tokens, B, dim): MultiheadAttention is sequence-first
        x = self.ln_kv(self.kv_proj(x)).transpose(0, 1)
        query = (self.ln_q(self.query) + self.pos_embed)[:, None].expand(-1, x.shape[1], -1)
        out = self.attn(query, x + key_pos[:, None], x, need_weights=False)[0]
        return out.transpose(0, 1)
