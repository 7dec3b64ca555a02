"""Ruyi's MagViT 3D VAE (the checkpoint's ``AutoencoderKLMagvit``): video <-> 16-channel latents.

How the original cuts time, which this module reproduces (``cache_compression_vae``):

- Encoding: a video of F = 8k frames is split into mini-batches of ``mini_batch_encoder`` (8)
  frames, each encoded on its own with zero time padding -> ``mini_batch_decoder`` (2) latent
  frames each. A single image (F = 1) is encoded alone -> 1 latent frame.
- Decoding: latents are split into mini-batches of 2 frames decoded in order. Every 3x3x3 conv is
  causal: the first mini-batch repeats its first frame as history, later ones get the last two
  input frames that conv saw in the mini-batch before (the "cache"). Each temporal upsampler
  doubles time by linear interpolation inside its mini-batch: 2 latent frames -> 8 frames.
  A single latent frame is decoded with zero time padding and no temporal upsampling -> 1 frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from ruyi.models.base import RuyiModelMixin
from ruyi.models.vae.conv import TimeCache
from ruyi.models.vae.decoder import TEMPORAL_UP, UP_BLOCK_TYPES, MagvitDecoder
from ruyi.models.vae.encoder import DOWN_BLOCK_TYPES, TEMPORAL_DOWN, MagvitEncoder
from ruyi.models.vae.output import HostOutputMixin
from ruyi.models.vae.tiling import SpatialTile, VAETiling, blend_weights, tile_grid
from ruyi.registry import VAES

LOGVAR_RANGE = (-30.0, 20.0)  # the clamp of diffusers' DiagonalGaussianDistribution, which the original uses
DOWN_BLOCKS = ("SpatialDownBlock3D",) + (TEMPORAL_DOWN,) * 3
UP_BLOCKS = ("SpatialUpBlock3D",) + (TEMPORAL_UP,) * 3


@VAES.register("magvit")
class MagvitVAE3D(HostOutputMixin, RuyiModelMixin):
    """MagViT VAE: ``encode(video (B, 3, F, H, W)) -> (mean, logvar)`` each ``(B, 16, F', H/8, W/8)``;
    ``decode(latents (B, 16, F', h, w)) -> video (B, 3, F, 8h, 8w)``; F' = F / 4 (F = 1 -> F' = 1).

    Keyword names are those of the checkpoint's ``vae/config.json``; the defaults describe
    Ruyi-Mini-7B. Options this class does not reproduce raise ``ValueError`` naming the option.
    Config fields that only matter in such modes or block types (``slice_mag_vae``,
    ``slice_compression_vae``, ``num_attention_heads``, ``tile_*``) are not parameters: loading
    keeps them in ``config`` unused (and saving writes them back); the original ignores them too
    when ``cache_compression_vae`` is on.

    ``decode_chunks`` yields the video mini-batch by mini-batch, for callers that want to bound
    the memory of long videos.

    Spatial tiling (off by default; then results are exactly the original's): ``enable_tiling(
    tile_sample_size=512, tile_overlap=96)`` makes ``encode``/``decode``/``decode_chunks`` split
    the (H, W) plane into overlapping tiles of at most 512 x 512 pixels' area (see ``VAETiling``;
    a 768 x 768 frame -> 3 tiles of 768 x 320), run each tile on its own and cross-fade the
    overlaps linearly (in latent space when encoding). ``disable_tiling()`` undoes it. The result
    is approximate: GroupNorm statistics and the mid-block attention then only see their tile
    (tests/test_vae_tiling.py states the measured error). A frame within one tile is exact.

    - ``decode`` goes tile by tile, each tile through all mini-batches with its own causal cache,
      so only one tile's cache and activations are alive (plus a float32 accumulator of the video).
    - ``decode_chunks`` goes mini-batch by mini-batch over all tiles, so it keeps every tile's
      cache at once: more memory than ``decode``, same values.
    - ``encode`` encodes each 8-frame mini-batch tile by tile.

    ``enable_host_output()`` / ``disable_host_output()``: decoded pieces go to host memory as they
    are made and the video is assembled there (``ruyi.models.vae.output``); same values.

    A diffusers ``ModelMixin``: ``from_pretrained``/``save_pretrained`` on the checkpoint's ``vae/``
    folder and ``enable_layerwise_casting`` come from the library.
    """

    checkpoint_class_name = "AutoencoderKLMagvit"
    subfolder = "vae"
    # encode()/decode() are the entry points, not forward(): offload hooks attach to these parts
    _offload_units = ["encoder", "quant_conv", "post_quant_conv", "decoder"]
    _no_split_modules = ["MagvitEncoder", "MagvitDecoder"]  # device_map placement
    _skip_layerwise_casting_patterns = ["norm"]  # enable_layerwise_casting keeps GroupNorms in the load dtype

    spatial_compression: int
    temporal_compression: int

    @register_to_config
    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        block_out_channels: Sequence[int] | None = None,
        layers_per_block: int = 2,
        latent_channels: int = 16,
        down_block_types: Sequence[str] = DOWN_BLOCKS,
        up_block_types: Sequence[str] = UP_BLOCKS,
        mid_block_type: str = "MidBlock3D",
        mid_block_use_attention: bool = True,
        mid_block_attention_type: str = "3d",
        mid_block_num_attention_heads: int = 1,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mini_batch_encoder: int = 8,
        mini_batch_decoder: int = 2,
        scaling_factor: float = 0.7125,
        cache_compression_vae: bool = True,
        spatial_group_norm: bool = False,
        use_gc_blocks: Sequence[bool] | None = None,
        upcast_vae: bool = False,
        use_tiling: bool = False,
        use_tiling_encoder: bool = False,
        use_tiling_decoder: bool = False,
    ) -> None:
        super().__init__()
        channels = [ch * m for m in ch_mult]
        _check_config(
            channels=channels, block_out_channels=block_out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, mid_block_type=mid_block_type,
            mid_block_attention_type=mid_block_attention_type, mini_batch_encoder=mini_batch_encoder,
            mini_batch_decoder=mini_batch_decoder, cache_compression_vae=cache_compression_vae,
            spatial_group_norm=spatial_group_norm, use_gc_blocks=use_gc_blocks, upcast_vae=upcast_vae,
            use_tiling=use_tiling, use_tiling_encoder=use_tiling_encoder,
            use_tiling_decoder=use_tiling_decoder,
        )  # fmt: skip
        shared = dict(
            block_out_channels=channels, layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
            act_fn=act_fn, mid_block_use_attention=mid_block_use_attention,
            mid_block_num_attention_heads=mid_block_num_attention_heads,
        )  # fmt: skip
        self.encoder = MagvitEncoder(
            in_channels=in_channels, latent_channels=latent_channels, down_block_types=down_block_types,
            **shared,
        )  # fmt: skip
        self.decoder = MagvitDecoder(
            latent_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types,
            **shared,
        )  # fmt: skip
        self.quant_conv = nn.Conv3d(2 * latent_channels, 2 * latent_channels, kernel_size=1)
        self.post_quant_conv = nn.Conv3d(latent_channels, latent_channels, kernel_size=1)

        self.scaling_factor = float(scaling_factor)
        self.latent_channels = latent_channels
        self.mini_batch_encoder = mini_batch_encoder
        self.mini_batch_decoder = mini_batch_decoder
        self.spatial_compression = 2 ** (len(channels) - 1)
        self.temporal_compression = mini_batch_encoder // mini_batch_decoder
        self.tiling: VAETiling | None = None

    def enable_tiling(self, tile_sample_size: int = 512, tile_overlap: int = 96) -> VAETiling:
        """Encode and decode in overlapping spatial tiles (sizes in video pixels); returns the options.

        Raises ``ValueError`` for sizes that are not positive multiples of ``spatial_compression``
        or an overlap not smaller than the tile.
        """
        tiling = VAETiling(tile_sample_size=tile_sample_size, tile_overlap=tile_overlap)
        tiling.check_divisible(self.spatial_compression)
        self.tiling = tiling
        return tiling

    def disable_tiling(self) -> None:
        """Back to the exact, untiled path."""
        self.tiling = None

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video (B, 3, F, H, W) in [-1, 1] -> posterior (mean, logvar), each (B, 16, F', H/8, W/8).

        F must be 1 (an image, F' = 1) or a multiple of ``mini_batch_encoder`` (F' = F / 4);
        H and W multiples of 8. ``logvar`` is clamped to [-30, 20] like the original's posterior.
        """
        _check_ndim("video", video)
        frames = video.shape[2]
        if frames != 1 and frames % self.mini_batch_encoder:
            n = self.mini_batch_encoder
            raise ValueError(
                f"MagvitVAE3D.encode needs 1 frame or a multiple of mini_batch_encoder={n} frames, "
                f"got {frames}; round the video length down to a multiple of {n}"
            )
        step = 1 if frames == 1 else self.mini_batch_encoder
        if self.tiling is None:
            encode = self._encode_mini_batch
            moments = torch.cat([encode(video[:, :, i : i + step]) for i in range(0, frames, step)], dim=2)
        else:
            moments = self._encode_tiled(video, step)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, 16, F', h, w), not scaled by ``scaling_factor`` -> video (B, 3, F, 8h, 8w), unclamped.

        F = 4 F' (F = 1 for F' = 1). See ``decode_chunks`` to receive the frames mini-batch by mini-batch.
        """
        if self.tiling is None:
            return torch.cat(list(self.decode_chunks(latents)), dim=2)  # pieces already where they belong
        return self._decode_tiled(latents)

    def decode_chunks(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """latents (B, 16, F', h, w) -> yields video pieces (B, 3, 4 * mini_batch_decoder, 8h, 8w) in order.

        Mini-batches run one after another and only the causal history (two frames per conv) is
        kept between them, so a caller may move or write out each piece before the next is made.
        F' must be 1 (one piece of 1 frame) or a multiple of ``mini_batch_decoder``. With tiling
        on, the history of every tile is kept (see the class docstring).
        """
        latents = self.post_quant_conv(self._check_latents(latents))
        if self.tiling is None:
            for piece in self._decode_mini_batches(latents):
                yield self._to_output(piece)
            return
        tiles, weights = self._tiles(latents.shape[-2:], self.spatial_compression, latents.device)
        # one generator per tile, each holding its own tile's cache between mini-batches
        streams = [self._decode_mini_batches(latents[..., t.rows, t.cols]) for t in tiles]
        for pieces in zip(*streams):
            video = None
            for tile, weight, piece in zip(tiles, weights, pieces):
                video = _accumulate(video, piece, tile, weight, self.spatial_compression, latents.shape[-2:])
            yield self._to_output(video.to(pieces[0].dtype))

    def _check_latents(self, latents: torch.Tensor) -> torch.Tensor:
        _check_ndim("latents", latents)
        frames = latents.shape[2]
        if frames != 1 and frames % self.mini_batch_decoder:
            raise ValueError(
                "MagvitVAE3D.decode needs 1 latent frame or a multiple of "
                f"mini_batch_decoder={self.mini_batch_decoder}, got {frames}"
            )
        return latents

    def _decode_mini_batches(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """Post-quant latents (B, 16, F', h, w) -> the decoder's pieces, with one causal cache throughout."""
        frames = latents.shape[2]
        if frames == 1:
            yield self.decoder(latents)
            return
        cache = TimeCache()
        for i in range(0, frames, self.mini_batch_decoder):
            yield self.decoder(latents[:, :, i : i + self.mini_batch_decoder], cache)

    def _tiles(
        self, latent_hw: Sequence[int], scale: int, device: torch.device
    ) -> tuple[list[SpatialTile], list[torch.Tensor]]:
        assert self.tiling is not None
        tiles = tile_grid(latent_hw[0], latent_hw[1], self.tiling, self.spatial_compression)
        return tiles, blend_weights(tiles, scale, device)

    def _decode_tiled(self, latents: torch.Tensor) -> torch.Tensor:
        """Tile-major, so only one tile's cache and activations are alive at a time; the float32
        accumulator lives on ``output_device`` (host output: the blending adds run there)."""
        latents = self.post_quant_conv(self._check_latents(latents))
        s = self.spatial_compression
        tiles, weights = self._tiles(latents.shape[-2:], s, latents.device)
        pieces_per_tile = 1 if latents.shape[2] == 1 else latents.shape[2] // self.mini_batch_decoder
        video, dtype = None, latents.dtype
        for tile, weight in zip(tiles, weights):
            for i, piece in enumerate(self._decode_mini_batches(latents[..., tile.rows, tile.cols])):
                n, dtype = piece.shape[2], piece.dtype
                if video is None:
                    shape = (*piece.shape[:2], n * pieces_per_tile, *(k * s for k in latents.shape[-2:]))
                    where = piece.device if self.output_device is None else self.output_device
                    video = torch.zeros(shape, dtype=torch.float32, device=where)
                _accumulate(video[:, :, i * n : (i + 1) * n], piece, tile, weight, s, latents.shape[-2:])
        assert video is not None
        return video.to(dtype)

    def _encode_mini_batch(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 3, 8 or 1, H, W) -> moments (B, 32, 2 or 1, H/8, W/8)."""
        return self.quant_conv(self.encoder(video))

    def _encode_tiled(self, video: torch.Tensor, step: int) -> torch.Tensor:
        """video (B, 3, F, H, W) -> moments (B, 32, F', H/8, W/8); each mini-batch tile by tile."""
        s = self.spatial_compression
        height, width = video.shape[-2:]
        if height % s or width % s:
            raise ValueError(f"tiled MagvitVAE3D.encode needs H and W multiples of {s}, got {height}x{width}")
        tiles, weights = self._tiles((height // s, width // s), 1, video.device)
        chunks = []
        for i in range(0, video.shape[2], step):
            moments = None
            for tile, weight in zip(tiles, weights):
                rows, cols = tile.scaled(s)
                piece = self._encode_mini_batch(video[:, :, i : i + step, rows, cols])
                moments = _accumulate(moments, piece, tile, weight, 1, (height // s, width // s))
            chunks.append(moments.to(piece.dtype))
        return torch.cat(chunks, dim=2)


def _accumulate(
    total: torch.Tensor | None,
    piece: torch.Tensor,
    tile: SpatialTile,
    weight: torch.Tensor,
    scale: int,
    latent_hw: Sequence[int],
) -> torch.Tensor:
    """Add ``piece`` (B, C, T, rows, cols at ``scale``) times ``weight`` into a float32 ``total``.

    ``total`` (B, C, T, h * scale, w * scale) is created at the first call (pass None); it may live
    on another device than ``piece`` (the product is computed beside the piece, then moved). Float32
    keeps the cross-fade from rounding twice in bfloat16; weights of one are exact, so a single
    tile reproduces the untiled result bit for bit.
    """
    if total is None:
        total = piece.new_zeros((*piece.shape[:3], *(n * scale for n in latent_hw)), dtype=torch.float32)
    rows, cols = tile.scaled(scale)
    total[..., rows, cols] += (piece.float() * weight).to(total.device)
    return total


def _check_ndim(name: str, x: torch.Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(f"{name} must be 5-D (B, C, F, H, W), got shape {tuple(x.shape)}")


def _check_config(
    *,
    channels: list[int],
    block_out_channels: Sequence[int] | None,
    down_block_types: Sequence[str],
    up_block_types: Sequence[str],
    mid_block_type: str,
    mid_block_attention_type: str,
    mini_batch_encoder: int,
    mini_batch_decoder: int,
    cache_compression_vae: bool,
    spatial_group_norm: bool,
    use_gc_blocks: Sequence[bool] | None,
    upcast_vae: bool,
    use_tiling: bool,
    use_tiling_encoder: bool,
    use_tiling_decoder: bool,
) -> None:
    """Reject configurations this reimplementation does not reproduce, naming the option."""
    if not cache_compression_vae:
        raise ValueError(
            "cache_compression_vae=False is not supported: only the cached mini-batch mode of Ruyi-Mini-7B "
            "is implemented, not the slice_mag_vae / slice_compression_vae / whole-video modes"
        )
    off = {
        "spatial_group_norm": spatial_group_norm,
        "upcast_vae": upcast_vae,  # precision is the loader's dtype: load the VAE in float32 instead
        "use_tiling": use_tiling,
        "use_tiling_encoder": use_tiling_encoder,
        "use_tiling_decoder": use_tiling_decoder,
        "use_gc_blocks": any(use_gc_blocks or ()),
    }
    for name, value in off.items():
        if value:
            raise ValueError(f"{name}={value!r} is not supported by MagvitVAE3D; set it to false/null")
    if block_out_channels is not None and list(block_out_channels) != channels:
        raise ValueError(
            f"block_out_channels={list(block_out_channels)} disagrees with ch * ch_mult = {channels}"
        )
    for name, types, allowed in (
        ("down_block_types", down_block_types, DOWN_BLOCK_TYPES),
        ("up_block_types", up_block_types, UP_BLOCK_TYPES),
    ):
        if len(types) != len(channels):
            raise ValueError(f"{name} has {len(types)} entries but ch_mult has {len(channels)}")
        unknown = sorted(set(types) - set(allowed))
        if unknown:
            raise ValueError(f"{name} {unknown} not supported; use {list(allowed)}")
    if mid_block_type != "MidBlock3D":
        raise ValueError(f"mid_block_type={mid_block_type!r} not supported; use 'MidBlock3D'")
    if mid_block_attention_type != "3d":
        raise ValueError(f"mid_block_attention_type={mid_block_attention_type!r} not supported; use '3d'")
    # Only blocks that resample (all but the last) change the frame count.
    down = 2 ** sum(t == TEMPORAL_DOWN for t in down_block_types[:-1])
    up = 2 ** sum(t == TEMPORAL_UP for t in up_block_types[:-1])
    if down != up or mini_batch_encoder != mini_batch_decoder * down:
        raise ValueError(
            f"mini_batch_encoder={mini_batch_encoder} and mini_batch_decoder={mini_batch_decoder} do not "
            f"match the blocks' temporal factor (down x{down}, up x{up}): "
            f"need mini_batch_encoder = mini_batch_decoder * {down}"
        )
