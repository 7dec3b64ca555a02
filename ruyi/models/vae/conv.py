"""The 3x3x3 convolution of the MagViT VAE, with the time padding that Ruyi's checkpoint expects."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TimeCache:
    """Per-convolution input frames carried from one decoder mini-batch to the next.

    Deliberately not a ``dict``: offload hooks (accelerate's ``cpu_offload``, diffusers' group
    offloading) rebuild mapping arguments on their way to the device, so a convolution's entry
    would land in a copy and the next mini-batch would start without history. A plain object
    passes through them by reference.
    """

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames: dict[nn.Module, torch.Tensor] = {}

    def get(self, conv: nn.Module) -> torch.Tensor | None:
        return self._frames.get(conv)

    def __setitem__(self, conv: nn.Module, frames: torch.Tensor) -> None:
        self._frames[conv] = frames

    def __len__(self) -> int:
        return len(self._frames)

KERNEL = 3
CONTEXT = KERNEL - 1  # frames of history a causal 3-tap time kernel needs


class MagvitConv3d(nn.Conv3d):
    """``x (B, C_in, T, H, W) -> (B, C_out, T', H', W')`` with a 3x3x3 kernel.

    Height and width are padded by ``spatial_padding`` as usual. Time is padded in one of two
    ways, picked per call:

    - ``cache is None``: one zero frame on each side ("same" padding, not causal). The encoder
      always runs like this, and so does the decoder for a single latent frame (an image).
    - ``cache`` given: causal. The first call for this conv in a cache prepends two copies of the
      first frame; later calls prepend the last two input frames of the previous call, so that a
      video decoded mini-batch by mini-batch sees the frames before it. Only stride 1 in time.

    Both are the modes the original switches between with its ``padding_flag`` (1/2 and 5/6).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: tuple[int, int, int] = (1, 1, 1),
        spatial_padding: int = 1,
    ) -> None:
        padding = (0, spatial_padding, spatial_padding)  # time is padded in forward
        super().__init__(in_channels, out_channels, kernel_size=KERNEL, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        if cache is None:
            x = F.pad(x, (0, 0, 0, 0, CONTEXT // 2, CONTEXT // 2))
            return super().forward(x)
        if self.stride[0] != 1:
            raise ValueError("causal (cached) time padding is only defined for time stride 1")
        history = cache.get(self)
        if history is None:
            # pad rather than cat an expanded first frame: same values, and the contiguous layout
            # the original feeds the conv (which then sums in the same order)
            x = F.pad(x, (0, 0, 0, 0, CONTEXT, 0), mode="replicate")
        else:
            x = torch.cat([history, x], dim=2)
        # clone: a view would keep the whole concatenated mini-batch alive until the next one
        cache[self] = x[:, :, -CONTEXT:].clone()
        return super().forward(x)
