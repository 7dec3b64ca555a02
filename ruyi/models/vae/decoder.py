"""The MagViT decoder: one mini-batch of latent frames -> pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.activations import get_activation
from torch import nn

from ruyi.models.vae.blocks import NORM_EPS, MagvitMidBlock3D, MagvitUpBlock3D
from ruyi.models.vae.conv import MagvitConv3d, TimeCache

TEMPORAL_UP = "SpatialTemporalUpBlock3D"
UP_BLOCK_TYPES = ("SpatialUpBlock3D", TEMPORAL_UP)


class MagvitDecoder(nn.Module):
    """``latents (B, latent, T, h, w) -> video (B, C_out, T*t, h*s, w*s)`` for one mini-batch.

    s = 2^(blocks-1); t = 2 per ``SpatialTemporalUpBlock3D`` that upsamples, but only with a
    ``cache`` (causal mini-batch decoding). Without one (a single latent frame) time is zero
    padded and t = 1.
    """

    def __init__(
        self,
        *,
        latent_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        up_block_types: Sequence[str],
        layers_per_block: int,
        norm_num_groups: int,
        act_fn: str,
        mid_block_use_attention: bool,
        mid_block_num_attention_heads: int,
    ) -> None:
        super().__init__()
        reversed_channels = list(reversed(block_out_channels))
        channels = reversed_channels[0]
        self.conv_in = MagvitConv3d(latent_channels, channels)
        self.mid_block = MagvitMidBlock3D(
            channels, num_layers=layers_per_block, norm_num_groups=norm_num_groups, act_fn=act_fn,
            attention=mid_block_use_attention, heads=mid_block_num_attention_heads,
        )  # fmt: skip
        self.up_blocks = nn.ModuleList()
        for i, (kind, block_channels) in enumerate(zip(up_block_types, reversed_channels)):
            self.up_blocks.append(
                MagvitUpBlock3D(
                    channels, block_channels, num_layers=layers_per_block + 1,
                    norm_num_groups=norm_num_groups, act_fn=act_fn,
                    upsample=i < len(reversed_channels) - 1, temporal=kind == TEMPORAL_UP,
                )  # fmt: skip
            )
            channels = block_channels
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels, eps=NORM_EPS)
        self.conv_act = get_activation(act_fn)
        self.conv_out = MagvitConv3d(channels, out_channels)

    def forward(self, latents: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        x = self.conv_in(latents, cache)
        x = self.mid_block(x, cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)), cache)
