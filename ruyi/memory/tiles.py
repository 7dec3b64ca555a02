"""The ``vae_tile_size`` / ``vae_tile_overlap`` options as an extension: the VAE works in
overlapping spatial tiles (``enable_tiling``, the diffusers convention) and blends them."""

from __future__ import annotations

from ruyi.extension import Extension


class VAETiles(Extension):
    stage = "vae"

    def __init__(self, tile_size: int, overlap: int = 96) -> None:
        self.tile_size = tile_size
        self.overlap = overlap

    def apply(self, pipe) -> None:
        pipe.vae.enable_tiling(tile_sample_size=self.tile_size, tile_overlap=self.overlap)

    def remove(self, pipe) -> None:
        pipe.vae.disable_tiling()
