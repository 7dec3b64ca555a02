"""Residual, resampling and attention blocks of the MagViT VAE (state-dict names of the checkpoint)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.activations import get_activation
from torch import nn

from ruyi.models.vae.conv import MagvitConv3d, TimeCache

NORM_EPS = 1e-6


class MagvitResBlock3D(nn.Module):
    """``x (B, C_in, T, H, W) -> (B, C_out, T, H, W)``: (GroupNorm, act, conv) twice plus a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, norm_num_groups: int, act_fn: str) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels, eps=NORM_EPS)
        self.nonlinearity = get_activation(act_fn)
        self.conv1 = MagvitConv3d(in_channels, out_channels)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=NORM_EPS)
        self.conv2 = MagvitConv3d(out_channels, out_channels)
        same = in_channels == out_channels
        self.shortcut = nn.Identity() if same else nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)), cache)
        h = self.conv2(self.nonlinearity(self.norm2(h)), cache)
        return h + self.shortcut(x)


def residual_stack(
    in_channels: int, out_channels: int, num_layers: int, norm_num_groups: int, act_fn: str
) -> nn.ModuleList:
    """``num_layers`` residual blocks; the first maps ``in_channels`` to ``out_channels``."""
    return nn.ModuleList(
        MagvitResBlock3D(c, out_channels, norm_num_groups=norm_num_groups, act_fn=act_fn)
        for c in [in_channels] + [out_channels] * (num_layers - 1)
    )


class MagvitDownsample3D(nn.Module):
    """``x (B, C, T, H, W) -> (B, C, T/s, H/2, W/2)`` with s = 2 when ``temporal`` else 1.

    Height and width get one zero row/column at the end (not both sides), then a stride-2 conv.
    """

    def __init__(self, channels: int, *, temporal: bool) -> None:
        super().__init__()
        self.conv = MagvitConv3d(channels, channels, stride=(2 if temporal else 1, 2, 2), spatial_padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class MagvitUpsample3D(nn.Module):
    """``x (B, C, T, H, W) -> (B, C, T*s, 2H, 2W)``: nearest 2x in space, conv, then linear 2x in time.

    Time is doubled (s = 2) only for a ``temporal`` block in cached mini-batch decoding, each
    mini-batch on its own (the interpolation does not look across mini-batches). A single latent
    frame (``cache is None``) stays one frame.
    """

    def __init__(self, channels: int, *, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.conv = MagvitConv3d(channels, channels)

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        x = self.conv(x, cache)
        if self.temporal and cache is not None:
            x = F.interpolate(x, scale_factor=(2, 1, 1), mode="trilinear")
        return x


class MagvitDownBlock3D(nn.Module):
    """``x (B, C_in, T, H, W) -> (B, C_out, T', H', W')``: residual blocks, then an optional downsample."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_layers: int,
        norm_num_groups: int,
        act_fn: str,
        downsample: bool,
        temporal: bool,
    ) -> None:
        super().__init__()
        self.convs = residual_stack(in_channels, out_channels, num_layers, norm_num_groups, act_fn)
        self.downsampler = MagvitDownsample3D(out_channels, temporal=temporal) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return x if self.downsampler is None else self.downsampler(x)


class MagvitUpBlock3D(nn.Module):
    """``x (B, C_in, T, H, W) -> (B, C_out, T', H', W')``: residual blocks, then an optional upsample."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_layers: int,
        norm_num_groups: int,
        act_fn: str,
        upsample: bool,
        temporal: bool,
    ) -> None:
        super().__init__()
        self.convs = residual_stack(in_channels, out_channels, num_layers, norm_num_groups, act_fn)
        self.upsampler = MagvitUpsample3D(out_channels, temporal=temporal) if upsample else None

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x, cache)
        return x if self.upsampler is None else self.upsampler(x, cache)


class MagvitAttention3D(nn.Module):
    """``x (B, C, T, H, W) -> (B, C, T, H, W)``: self-attention over all T*H*W positions, plus residual.

    The query/key/value input is group-normalised; the residual is the raw input. ``to_out`` is a
    plain Linear (diffusers' ``Attention`` nests it as ``to_out.0``, so it cannot load these keys).
    """

    def __init__(self, channels: int, *, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(
                f"mid_block_num_attention_heads={heads} does not divide the {channels} mid-block channels"
            )
        self.heads = heads
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        # Positions-major tokens (B, L, C), returned as a strided view: the memory layout the
        # original hands to the next block, whose GroupNorm/conv then sum in the same order.
        tokens = x.permute(0, 2, 3, 4, 1).reshape(b, t * h * w, c)
        normed = self.group_norm(tokens.transpose(1, 2)).transpose(1, 2)

        def split_heads(proj: nn.Linear) -> torch.Tensor:
            return proj(normed).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, heads, L, C/heads)

        q, k, v = (split_heads(proj) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.to_out(out.transpose(1, 2).flatten(2)) + tokens
        return out.unflatten(1, (t, h, w)).permute(0, 4, 1, 2, 3)


class MagvitMidBlock3D(nn.Module):
    """``x (B, C, T, H, W) -> (B, C, T, H, W)``: residual block, then (attention, residual block) x N."""

    def __init__(
        self,
        channels: int,
        *,
        num_layers: int,
        norm_num_groups: int,
        act_fn: str,
        attention: bool,
        heads: int,
    ) -> None:
        super().__init__()
        self.convs = residual_stack(channels, channels, num_layers, norm_num_groups, act_fn)
        # None entries keep the checkpoint's indices when attention is switched off
        self.attentions = nn.ModuleList(
            MagvitAttention3D(channels, heads=heads, groups=norm_num_groups) if attention else None
            for _ in range(num_layers - 1)
        )

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        x = self.convs[0](x, cache)
        for attn, conv in zip(self.attentions, self.convs[1:]):
            if attn is not None:
                x = attn(x)
            x = conv(x, cache)
        return x
