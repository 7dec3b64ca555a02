"""Spatially tiled VAE encode/decode against the exact path, on small random models (CPU).

Measured tolerances (rms of the difference / rms of the untiled result; random weights):
- full model (GroupNorm + mid-block attention): the dominant error is GroupNorm's statistics, which
  a tile takes over its own pixels only, and it shrinks as tiles grow past the decoder's receptive
  field (~17 latent pixels of radius). ch=8 at 96 px, 2 x 2 tiles of 56 px: decode 0.49 / encode
  0.17; ch=32 at 256 px with 192/64 (3 tiles of 256 x 128): 0.21 / 0.09; the real config at
  768 x 120 (H100, bf16, ``benchmarks/vae_memory.py``) with 512/96 (3 tiles of 768 x 320):
  0.076 / 0.041. Trained weights should do better than random ones; the checkpoint is not here.
- without GroupNorm and attention only receptive fields cut by tile edges remain: ~0.03, the same
  in every mini-batch (each tile's causal cache is its own).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ruyi.models.vae import MagvitVAE3D, VAETiling
from ruyi.models.vae.tiling import axis_spans, blend_weights, tile_grid


def rms_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return float((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt())


@pytest.fixture(scope="module")
def tiny_vae() -> MagvitVAE3D:
    torch.manual_seed(0)
    return MagvitVAE3D(ch=8, norm_num_groups=4).eval()


@pytest.fixture(scope="module")
def local_vae() -> MagvitVAE3D:
    """No GroupNorm and no attention: every output pixel depends on a bounded neighbourhood only."""
    torch.manual_seed(0)
    vae = MagvitVAE3D(ch=8, norm_num_groups=4, mid_block_use_attention=False).eval()
    for module in list(vae.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, nn.Identity())
    return vae


class tiled:
    """``with tiled(vae, 64, 16):`` tiling on inside the block, off after it."""

    def __init__(self, vae: MagvitVAE3D, size: int, overlap: int) -> None:
        self.vae, self.size, self.overlap = vae, size, overlap

    def __enter__(self) -> VAETiling:
        return self.vae.enable_tiling(tile_sample_size=self.size, tile_overlap=self.overlap)

    def __exit__(self, *exc) -> None:
        self.vae.disable_tiling()


# -- geometry ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "count", "overlap"), [(96, 2, 12), (96, 3, 12), (50, 3, 5), (9, 2, 0), (17, 4, 3)]
)
def test_axis_spans_cover_with_the_overlap(length, count, overlap):
    spans = axis_spans(length, count, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length and len(spans) == count
    assert len({b - a for a, b in spans}) == 1
    assert all(prev[1] - nxt[0] >= overlap for prev, nxt in zip(spans, spans[1:]))


@pytest.mark.parametrize(
    ("size", "overlap", "grid"),
    [
        (512, 96, (1, 3, 768, 320)),
        (640, 96, (1, 2, 768, 432)),
        (384, 96, (2, 3, 432, 320)),
        (768, 96, (1, 1, 768, 768)),
    ],
)
def test_grid_of_a_768_frame(size, overlap, grid):
    tiles = tile_grid(96, 96, VAETiling(size, overlap), 8)
    rows, cols = len({t.rows.start for t in tiles}), len({t.cols.start for t in tiles})
    assert (rows, cols, tiles[0].rows.stop * 8, tiles[0].cols.stop * 8) == grid
    assert all((t.rows.stop - t.rows.start) * (t.cols.stop - t.cols.start) * 64 <= size**2 for t in tiles)


@pytest.mark.parametrize("scale", [1, 8])
def test_blend_weights_sum_to_one(scale):
    tiles = tile_grid(21, 13, VAETiling(64, 24), 8)
    assert len(tiles) > 4
    total = torch.zeros(21 * scale, 13 * scale)
    for tile, weight in zip(tiles, blend_weights(tiles, scale, torch.device("cpu"))):
        rows, cols = tile.scaled(scale)
        assert weight.shape == total[rows, cols].shape and weight.min() > 0
        total[rows, cols] += weight
    torch.testing.assert_close(total, torch.ones_like(total))


# -- one tile is the exact path ---------------------------------------------------------------------
@torch.no_grad()
def test_default_off_and_one_tile_is_bit_exact(tiny_vae):
    assert MagvitVAE3D(ch=8, norm_num_groups=4).tiling is None
    latents = torch.randn(1, 16, 4, 2, 3)
    video = torch.rand(1, 3, 16, 16, 24) * 2 - 1
    exact = tiny_vae.decode(latents), tiny_vae.encode(video), tiny_vae.encode(video[:, :, :1])
    with tiled(tiny_vae, 64, 16):
        assert torch.equal(tiny_vae.decode(latents), exact[0])
        assert torch.equal(torch.cat(list(tiny_vae.decode_chunks(latents)), dim=2), exact[0])
        for got, want in zip((tiny_vae.encode(video), tiny_vae.encode(video[:, :, :1])), exact[1:]):
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# -- several tiles ----------------------------------------------------------------------------------
@torch.no_grad()
def test_tiles_are_decoded_alone_with_their_own_cache(tiny_vae):
    """Tiled decode == each tile's latents decoded by the exact path (its own cache), cross-faded."""
    latents = torch.randn(1, 16, 4, 4, 5)
    with tiled(tiny_vae, 24, 8) as tiling:
        got = tiny_vae.decode(latents)
        chunks = torch.cat(list(tiny_vae.decode_chunks(latents)), dim=2)
    tiles = tile_grid(4, 5, tiling, 8)
    assert len(tiles) >= 4
    expected = torch.zeros_like(got)
    for tile, weight in zip(tiles, blend_weights(tiles, 8, latents.device)):
        rows, cols = tile.scaled(8)
        expected[..., rows, cols] += tiny_vae.decode(latents[..., tile.rows, tile.cols]) * weight
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.equal(chunks, got)  # mini-batch-major order, same values


@torch.no_grad()
def test_local_model_tiled_matches_untiled_in_every_mini_batch(local_vae):
    latents = torch.randn(1, 16, 4, 10, 10)
    exact = local_vae.decode(latents)
    with tiled(local_vae, 64, 32):
        got = local_vae.decode(latents)
    first, second = rms_err(got[:, :, :8], exact[:, :, :8]), rms_err(got[:, :, 8:], exact[:, :, 8:])
    assert first < 0.04 and second < 0.04, (first, second)  # measured 0.027 and 0.028
    # without the history the second mini-batch is far off (0.45): each tile's cache carried its frames
    assert rms_err(local_vae.decode(latents[:, :, 2:]), exact[:, :, 8:]) > 0.3


@torch.no_grad()
def test_full_model_tiled_within_tolerance(tiny_vae):
    torch.manual_seed(1)
    latents = torch.randn(1, 16, 2, 12, 12)
    video = torch.rand(1, 3, 8, 96, 96) * 2 - 1
    exact_video, (exact_mean, _) = tiny_vae.decode(latents), tiny_vae.encode(video)
    with tiled(tiny_vae, 72, 40):  # 2 x 2 tiles of 56 px: smaller than the decoder's receptive field
        video_err = rms_err(tiny_vae.decode(latents), exact_video)
        mean, logvar = tiny_vae.encode(video)
    mean_err = rms_err(mean, exact_mean)
    assert video_err < 0.6 and mean_err < 0.25, (video_err, mean_err)  # measured 0.49 and 0.17
    assert logvar.min() >= -30 and logvar.max() <= 20


# -- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile_sample_size": 0}, "must be positive"),
        ({"tile_sample_size": 256, "tile_overlap": 256}, "smaller than tile_sample_size=256"),
        ({"tile_sample_size": 256, "tile_overlap": -8}, ">= 0"),
        ({"tile_sample_size": 250}, "multiple of the VAE's spatial compression 8; try 248"),
        ({"tile_sample_size": 256, "tile_overlap": 12}, "tile_overlap=12 must be a multiple"),
        ({"tile_sample_size": 256.0}, "must be an int"),
    ],
)
def test_bad_tiling_options_raise(tiny_vae, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_vae.enable_tiling(**kwargs)
    assert tiny_vae.tiling is None


@torch.no_grad()
def test_tiled_encode_needs_whole_latent_pixels(tiny_vae):
    with tiled(tiny_vae, 64, 16), pytest.raises(ValueError, match="multiples of 8, got 36x48"):
        tiny_vae.encode(torch.zeros(1, 3, 8, 36, 48))
