"""MagViT VAE: loading the fixture, shapes and time cutting on a tiny model (parity: test_golden.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ruyi.models.loading import load_model
from ruyi.models.vae import MagvitVAE3D
from ruyi.registry import VAES

TOL = 1e-5


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def fixture_state(fixture_dir):
    return load_file(str(fixture_dir / "vae" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def fixture_vae(fixture_dir) -> MagvitVAE3D:
    return load_model(MagvitVAE3D, fixture_dir)


@pytest.fixture(scope="module")
def tiny_vae() -> MagvitVAE3D:
    torch.manual_seed(0)
    return MagvitVAE3D(ch=8, norm_num_groups=4).eval()


# -- the fixture checkpoint -------------------------------------------------------------------------
def test_fixture_loads_every_tensor(fixture_vae, fixture_state, fixture_dir):
    assert set(fixture_vae.state_dict()) == set(fixture_state)
    for name, tensor in fixture_vae.state_dict().items():
        assert torch.equal(tensor, fixture_state[name]), name
    # a plain construction from the same config.json takes the same state dict strictly
    config = json.loads((fixture_dir / "vae" / "config.json").read_text())
    result = MagvitVAE3D.from_config(config).load_state_dict(fixture_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_defaults_have_the_checkpoint_layout(fixture_state):
    """The default constructor (Ruyi-Mini-7B) has the same key names as the fixture, which mirrors it."""
    with torch.device("meta"):
        vae = MagvitVAE3D()
    assert set(vae.state_dict()) == set(fixture_state)
    assert vae.spatial_compression == 8 and vae.temporal_compression == 4 and vae.latent_channels == 16
    assert vae.encoder.conv_in.weight.shape == (128, 3, 3, 3, 3)


# Golden parity of encode/decode runs in tests/test_golden.py, driven by golden.json.


# -- a fresh tiny model -----------------------------------------------------------------------------
def test_registered():
    assert VAES.get("magvit") is MagvitVAE3D


@pytest.mark.parametrize(("frames", "latent_frames"), [(16, 4), (8, 2), (1, 1)])
@torch.no_grad()
def test_encode_decode_shapes(tiny_vae, frames, latent_frames):
    video = torch.rand(2, 3, frames, 32, 48) * 2 - 1
    mean, logvar = tiny_vae.encode(video)
    assert mean.shape == logvar.shape == (2, 16, latent_frames, 4, 6)
    assert logvar.min() >= -30 and logvar.max() <= 20
    assert tiny_vae.decode(mean).shape == (2, 3, frames, 32, 48)


@torch.no_grad()
def test_bad_frame_counts_raise(tiny_vae):
    with pytest.raises(ValueError, match="multiple of mini_batch_encoder=8 frames, got 12"):
        tiny_vae.encode(torch.zeros(1, 3, 12, 16, 16))
    with pytest.raises(ValueError, match="mini_batch_decoder=2, got 3"):
        tiny_vae.decode(torch.zeros(1, 16, 3, 2, 2))
    with pytest.raises(ValueError, match="5-D"):
        tiny_vae.encode(torch.zeros(3, 16, 16))


@torch.no_grad()
def test_encoder_mini_batches_are_independent(tiny_vae):
    video = torch.randn(1, 3, 16, 16, 16)
    mean, _ = tiny_vae.encode(video)
    second, _ = tiny_vae.encode(video[:, :, 8:])
    assert rel_err(mean[:, :, 2:], second) < TOL


@torch.no_grad()
def test_decoder_is_causal_across_mini_batches(tiny_vae):
    latents = torch.randn(1, 16, 4, 2, 2)
    full = tiny_vae.decode(latents)
    assert rel_err(tiny_vae.decode(latents[:, :, :2]), full[:, :, :8]) < TOL
    # the second mini-batch sees the first through the cache: decoding it alone differs
    assert rel_err(tiny_vae.decode(latents[:, :, 2:]), full[:, :, 8:]) > 1e-3
    pieces = list(tiny_vae.decode_chunks(latents))
    assert [p.shape[2] for p in pieces] == [8, 8]
    torch.testing.assert_close(torch.cat(pieces, dim=2), full, rtol=0, atol=0)


def test_builds_on_meta_without_buffers():
    with torch.device("meta"):
        vae = MagvitVAE3D(ch=8, norm_num_groups=4)
    assert all(p.is_meta for p in vae.parameters())
    assert not list(vae.buffers())


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cache_compression_vae", False),
        ("spatial_group_norm", True),
        ("upcast_vae", True),
        ("use_tiling", True),
        ("use_gc_blocks", [True, False, False, False]),
        ("mid_block_attention_type", "spatial"),
        ("mid_block_type", "UNetMidBlock3D"),
        ("down_block_types", ["SpatialDownBlock3D"] * 3 + ["TemporalDownBlock3D"]),
        ("block_out_channels", [8, 16, 32, 64]),
        ("mini_batch_encoder", 9),
    ],
)
def test_unsupported_options_name_themselves(option, value):
    with pytest.raises(ValueError, match=option):
        with torch.device("meta"):
            MagvitVAE3D(ch=8, norm_num_groups=4, **{option: value})
