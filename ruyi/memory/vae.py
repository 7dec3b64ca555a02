"""The decoded video goes to host memory piece by piece instead of being assembled on the GPU.

What the VAE already does (``ruyi.models.vae.autoencoder``): decoding runs in temporal
mini-batches of 2 latent frames (8 video frames) with a causal cache between them, encoding in
8-frame mini-batches; spatial tiles split each mini-batch further. Temporal chunks finer than a
mini-batch would not be exact (the temporal upsampler interpolates inside a mini-batch and the
GroupNorms take statistics over its frames), so there is no finer temporal chunking to add.

What still covers the whole video on the GPU is the output: the decoded video (and, tiled, its
float32 blending accumulator), then the pipeline's clamp and rescale copies of it. At 768 x 768
x 120 frames that is 0.4 GiB per bf16 copy and 0.8 GiB for float32, 1.3-2 GiB in all at the end
of decoding. With this option each decoded piece is copied out as soon as it is made, the
blending adds happen in host memory, and the pipeline's post-processing runs on the host too.
The values are those of the VAE's own decode (the same float32 blend, the same order).
"""

from __future__ import annotations

import torch

from ruyi.memory.base import ForwardPatches, MemoryOption
from ruyi.models.vae.tiling import blend_weights, tile_grid
from ruyi.registry import MEMORIES

HOST = torch.device("cpu")


def decode_to_host(vae, latents: torch.Tensor) -> torch.Tensor:
    """``vae.decode(latents)`` with the video assembled in host memory (the VAE's dtype)."""
    tiling = vae.tiling
    if tiling is None:
        return torch.cat([piece.to(HOST) for piece in vae.decode_chunks(latents)], dim=2)
    s = vae.spatial_compression
    tiles = tile_grid(latents.shape[-2], latents.shape[-1], tiling, s)
    weights = blend_weights(tiles, s, latents.device)
    video, dtype = None, latents.dtype
    vae.tiling = None  # each tile decodes untiled, with its own causal cache, tile after tile
    try:
        for tile, weight in zip(tiles, weights):
            start = 0
            rows, cols = tile.scaled(s)
            for piece in vae.decode_chunks(latents[..., tile.rows, tile.cols]):
                if video is None:
                    frames = piece.shape[2] * max(1, latents.shape[2] // vae.mini_batch_decoder)
                    shape = (*piece.shape[:2], frames, latents.shape[-2] * s, latents.shape[-1] * s)
                    video = torch.zeros(shape, dtype=torch.float32, device=HOST)
                dtype, n = piece.dtype, piece.shape[2]
                video[:, :, start : start + n, rows, cols] += (piece.float() * weight).to(HOST)
                start += n
    finally:
        vae.tiling = tiling
    return video.to(dtype)


@MEMORIES.register("vae_stream")
class DecodeToHost(MemoryOption):
    def __init__(self) -> None:
        self._patches = ForwardPatches()

    def apply(self, pipe) -> None:
        vae = pipe.vae
        if not hasattr(vae, "decode_chunks"):  # decodes in one piece (pixel_patch): the video goes to host whole
            self._patches.wrap(vae, lambda original, latents: original(latents).to(HOST), method="decode")
            return
        self._patches.wrap(vae, lambda original, latents: decode_to_host(vae, latents), method="decode")

    def remove(self, pipe) -> None:
        self._patches.undo()
