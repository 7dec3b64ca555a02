"""The pixel_patch codec: what is exact about it, and that the pipeline runs on it unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ruyi.models.vae.pixel import PixelPatchVAE, latent_statistics, patch_basis

PRESET = Path(__file__).resolve().parents[1] / "configs" / "model" / "ruyi_tiny_pans.yaml"


def test_patterns_are_orthonormal():
    basis = patch_basis()
    assert basis.shape == (768, 16)
    torch.testing.assert_close(basis.T @ basis, torch.eye(16), rtol=0, atol=1e-6)


def test_encode_inverts_decode_and_blocky_videos_round_trip():
    vae = PixelPatchVAE(latent_mean=[0.3] * 16, latent_std=[2.0] * 16)
    z = torch.randn(2, 16, 3, 4, 5)
    torch.testing.assert_close(vae.encode(vae.decode(z))[0], z, rtol=0, atol=1e-5)
    # a video constant on 8 x 8 blocks per frame is exactly representable
    blocks = torch.rand(1, 3, 8, 4, 6) * 2 - 1
    video = blocks.repeat_interleave(8, 3).repeat_interleave(8, 4)
    torch.testing.assert_close(vae(video), video, rtol=0, atol=1e-5)
    # decode(encode(x)) is a projection: applying it twice changes nothing more
    x = torch.rand(1, 3, 8, 16, 24) * 2 - 1
    torch.testing.assert_close(vae(vae(x)), vae(x), rtol=0, atol=1e-5)


def test_shapes_follow_the_pipelines_latent_rules():
    vae = PixelPatchVAE()
    assert (vae.spatial_compression, vae.temporal_compression, vae.latent_channels) == (8, 4, 16)
    assert vae.encode(torch.zeros(1, 3, 16, 64, 96))[0].shape == (1, 16, 4, 8, 12)
    image = torch.rand(1, 3, 1, 64, 96) * 2 - 1
    z = vae.encode(image)[0]
    assert z.shape == (1, 16, 1, 8, 12) and vae.decode(z).shape == (1, 3, 1, 64, 96)
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(torch.zeros(1, 3, 6, 64, 96))


def test_statistics_give_unit_variance_latents():
    g = torch.Generator().manual_seed(0)
    videos = [torch.rand(2, 3, 8, 32, 32, generator=g) * 1.6 - 0.9 for _ in range(3)]
    mean, std = latent_statistics(videos)
    z = PixelPatchVAE(latent_mean=mean, latent_std=std).encode(torch.cat(videos))[0]
    per_channel = z.transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(16), rtol=0, atol=2e-3)
    torch.testing.assert_close(per_channel.std(1), torch.ones(16), rtol=0, atol=2e-3)


def test_a_checkpoint_on_it_loads_strictly_and_generates(tmp_path):
    from hydra import compose, initialize_config_dir

    from ruyi.assembly import PipelineSpec, build
    from ruyi.io import procedural_image
    from ruyi.checkpoints.tiny import create_tiny_checkpoint

    preset = OmegaConf.to_container(OmegaConf.load(PRESET))
    path = create_tiny_checkpoint(tmp_path / "ckpt", preset)
    with initialize_config_dir(config_dir=str(PRESET.parents[1]), version_base=None):
        cfg = compose("infer", overrides=["model=ruyi_tiny_pans", "vae=pixel_patch", f"model.path={path}", "device=cpu"])
    pipe = build(PipelineSpec.from_config(cfg))
    assert isinstance(pipe.vae, PixelPatchVAE)
    assert pipe.vae.coeff_std.tolist() == pytest.approx(preset["vae_arch"]["latent_std"])
    video = pipe(procedural_image(96, 64), frames=8, video_size=[64, 96], steps=2, progress=False)
    assert video.shape == (1, 3, 8, 64, 96) and torch.isfinite(video).all()
