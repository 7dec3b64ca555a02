"""The MagViT encoder: one mini-batch of frames -> posterior moments."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.activations import get_activation
from torch import nn

from ruyi.models.vae.blocks import NORM_EPS, MagvitDownBlock3D, MagvitMidBlock3D
from ruyi.models.vae.conv import MagvitConv3d

TEMPORAL_DOWN = "SpatialTemporalDownBlock3D"
DOWN_BLOCK_TYPES = ("SpatialDownBlock3D", TEMPORAL_DOWN)


class MagvitEncoder(nn.Module):
    """``video (B, C_in, T, H, W) -> moments (B, 2*latent, T/t, H/s, W/s)`` for one mini-batch.

    s = 2^(blocks-1); t = 2 per ``SpatialTemporalDownBlock3D`` that downsamples. Time is zero
    padded in every conv, so mini-batches are encoded independently of each other.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        latent_channels: int,
        block_out_channels: Sequence[int],
        down_block_types: Sequence[str],
        layers_per_block: int,
        norm_num_groups: int,
        act_fn: str,
        mid_block_use_attention: bool,
        mid_block_num_attention_heads: int,
    ) -> None:
        super().__init__()
        self.conv_in = MagvitConv3d(in_channels, block_out_channels[0])
        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for i, (kind, out_channels) in enumerate(zip(down_block_types, block_out_channels)):
            self.down_blocks.append(
                MagvitDownBlock3D(
                    channels, out_channels, num_layers=layers_per_block, norm_num_groups=norm_num_groups,
                    act_fn=act_fn, downsample=i < len(block_out_channels) - 1, temporal=kind == TEMPORAL_DOWN,
                )  # fmt: skip
            )
            channels = out_channels
        self.mid_block = MagvitMidBlock3D(
            channels, num_layers=layers_per_block, norm_num_groups=norm_num_groups, act_fn=act_fn,
            attention=mid_block_use_attention, heads=mid_block_num_attention_heads,
        )  # fmt: skip
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels, eps=NORM_EPS)
        self.conv_act = get_activation(act_fn)
        self.conv_out = MagvitConv3d(channels, 2 * latent_channels)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(video)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))
