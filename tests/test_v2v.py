"""Video-to-video (SDEdit): where denoising starts, the frame count, the conditioning, the checks and
the monotone closeness to the input as strength falls (issue 25, item 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ruyi.errors import ConfigError, InputError

KW = dict(video_size=[64, 64], progress=False, camera="left", motion="2")


@pytest.fixture(scope="module")
def pans():
    from ruyi.assembly import load_pipeline

    return load_pipeline("ruyi_tiny_pans")


@pytest.fixture(scope="module")
def clip():
    """A true pan of a held-out picture: 16 frames, content moving right 4 px a frame."""
    from ruyi.eval.heldout import image_set, true_pans

    image = image_set("heldout", height=64, width=64, travel=60, per_kind=1, kinds=["drawn"], views=1)[0]
    return true_pans(image.canvas, frames=16, height=64, width=64, speed=4)["left"]


# -- where denoising starts ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddim", "euler", "euler_a", "dpmpp"])
def test_strength_keeps_the_last_steps_of_the_schedule(name):
    from ruyi.hydra_config import load_preset
    from ruyi.registry import SAMPLERS

    config = load_preset("ruyi_tiny_pans")["scheduler_config"]
    sampler = SAMPLERS.get(name)(scheduler_config=config)
    full = sampler.set_timesteps(10).clone()
    for strength, left in ((1.0, 10), (0.6, 6), (0.3, 3), (0.01, 1)):
        sampler.set_timesteps(10)
        timesteps, steps = sampler.start_at(sampler.scheduler.timesteps, 10, strength)
        assert steps == left and torch.equal(timesteps, full[10 - left :])


def test_noise_at_the_start_timestep_follows_the_forward_process(pans):
    clean, noise = torch.randn(1, 16, 2, 8, 8), torch.randn(1, 16, 2, 8, 8)
    pans.sampler.set_timesteps(10)
    timesteps, _ = pans.sampler.start_at(pans.sampler.scheduler.timesteps, 10, 0.5)
    noisy = pans.sampler.add_noise(clean, noise, timesteps[0])
    alpha = pans.sampler.scheduler.alphas_cumprod[int(timesteps[0])]
    assert torch.allclose(noisy, alpha.sqrt() * clean + (1 - alpha).sqrt() * noise, atol=1e-6)


# -- the request ------------------------------------------------------------------------------------------
def test_the_output_has_the_inputs_frame_count_rounded_down(pans, clip, caplog):
    video = pans(video=clip[:13], strength=0.5, steps=2, **KW)
    assert video.shape == (1, 3, 8, 64, 64) and "holds 13 frames: the output has 8" in caplog.text
    assert pans(video=clip, strength=0.5, steps=2, frames=8, **KW).shape[2] == 8
    with pytest.raises(InputError, match="holds 16 frames, fewer than frames=24"):
        pans(video=clip, frames=24, steps=2, **KW)
    with pytest.raises(InputError, match="holds 5 frames; video-to-video needs 1 or at least 8"):
        pans(video=clip[:5], steps=2, **KW)


def test_the_inputs_first_frame_is_the_start_keyframe_unless_keyframes_are_given(pans, clip):
    from ruyi.conditioning.keyframes import Keyframe

    request = pans.check_inputs(None, video=clip, frames=None, seed=0, camera="left", motion="2", base_resolution=384,
                                video_size=[64, 64], steps=2, cfg=4.0)  # fmt: skip
    assert [k.frame for k in request.keyframes] == [0] and np.array_equal(request.keyframes[0].image, clip[0])
    given = pans.check_inputs(None, video=clip, keyframes=[Keyframe(clip[15], 15)], frames=None, seed=0, camera="left",
                              motion="2", base_resolution=384, video_size=[64, 64], steps=2, cfg=4.0)  # fmt: skip
    assert [k.frame for k in given.keyframes] == [15]


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"strength": 0}, ConfigError, "strength=0 must be a number > 0 and <= 1"),
    ({"strength": 1.01}, ConfigError, "strength=1.01 must be a number > 0 and <= 1"),
    ({"strength": float("nan")}, ConfigError, "strength=nan must be a finite number"),
    ({"video": np.zeros((0, 64, 64, 3), np.uint8)}, InputError, "video holds no frames"),
    ({"video": np.zeros((8, 64, 64), np.uint8)}, InputError, "expected (F, H, W, 3)"),
])  # fmt: skip
def test_bad_strength_or_frames_are_refused(pans, clip, kwargs, error, words):
    with pytest.raises(error) as err:
        pans(**{"video": clip, **kwargs}, steps=2, **KW)
    assert words in str(err.value)


def test_a_video_file_is_read_and_checked(pans, clip, tmp_path):
    from ruyi.conditioning.video import open_video
    from ruyi.io import write_mp4

    path = tmp_path / "in.mp4"
    write_mp4(torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 255, path)
    source = open_video(str(path))
    assert source.frames == 16 and source.size == (64, 64)
    assert pans(video=str(path), strength=0.4, steps=2, **KW).shape == (1, 3, 16, 64, 64)
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(InputError, match="is not a readable video"):
        open_video(str(tmp_path / "bad.mp4"))
    with pytest.raises(InputError, match="is a directory"):
        open_video(str(tmp_path))


def test_the_reader_moves_forward_over_overlapping_segments_and_pads_the_end(clip):
    from ruyi.conditioning.video import VideoReader, open_video

    reader = VideoReader(open_video(clip), width=64, height=64)
    first = reader.segment(0, 8)
    assert torch.equal(first[0, :, 3], torch.from_numpy(clip[3]).permute(2, 0, 1).float() / 255)
    again = reader.segment(4, 8)
    assert torch.equal(again[:, :, :4], first[:, :, 4:])
    last = reader.segment(12, 8)  # 4 frames left: the last one repeats
    assert torch.equal(last[:, :, 3], last[:, :, 7])
    skipped = VideoReader(open_video(clip), width=64, height=64).segment(10, 2)
    assert torch.equal(skipped[0, :, 0], torch.from_numpy(clip[10]).permute(2, 0, 1).float() / 255)


# -- what strength does ---------------------------------------------------------------------------------------
def test_the_output_comes_closer_to_the_input_as_strength_falls(pans, clip):
    from ruyi.eval import evaluate

    psnr = [evaluate(pans(video=clip, strength=s, seed=0, **KW), reference=clip, metrics=["psnr"])["psnr"]
            for s in (0.9, 0.6, 0.3)]  # fmt: skip
    assert psnr[0] < psnr[1] < psnr[2], psnr


def test_a_long_input_is_redrawn_segment_by_segment(pans, clip):
    long = np.concatenate([clip, clip[::-1], clip])  # 48 frames: 16-frame segments overlapping by 8
    chunks = []
    pans(video=long, strength=0.5, steps=2, sink=chunks.append, **{**KW, "camera": "auto"})
    assert [c.shape[2] for c in chunks] == [16, 8, 8, 8, 8]
