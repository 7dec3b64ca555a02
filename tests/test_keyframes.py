"""Keyframes anywhere: the layout, the shorthand's identity with image=/end_image=, the checks, the
training masks, the ComfyUI node and the metric (issue 25, item 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ruyi.conditioning.image import GENERATE, KEEP, StartEndFrames, frames_from_images, frames_from_keyframes
from ruyi.conditioning.keyframes import Keyframe, merge_keyframes, parse_keyframes
from ruyi.errors import ConfigError, InputError

KW = dict(video_size=[64, 64], steps=2, progress=False)


def picture(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def resized(image: np.ndarray, height: int = 32, width: int = 32) -> torch.Tensor:
    """(3, H, W) in [0, 1], resized as every keyframe is (PIL bicubic)."""
    pixels = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1) / 255.0


@pytest.fixture(scope="module")
def pans():
    from ruyi.assembly import load_pipeline

    return load_pipeline("ruyi_tiny_pans")


# -- the layout --------------------------------------------------------------------------------------
def test_keyframes_are_kept_at_their_frames_and_every_other_frame_is_generated():
    keys = [Keyframe(picture(0), 0), Keyframe(picture(1), 5), Keyframe(picture(2), 15)]
    layout = frames_from_keyframes(keys, frames=16, height=32, width=32)
    per_frame = layout.mask[0, 0, :, 0, 0]
    want = torch.full((16,), GENERATE)
    want[[0, 5, 15]] = KEEP
    assert torch.equal(per_frame, want)
    for key in keys:
        assert torch.equal(layout.video[0, :, key.frame], resized(key.image))
    assert np.array_equal(layout.clip_image, resized(picture(0)).permute(1, 2, 0).numpy() * 255)


def test_without_a_start_frame_the_earliest_keyframe_is_the_clip_image():
    layout = frames_from_keyframes([Keyframe(picture(3), 6)], frames=8, height=32, width=32)
    assert layout.mask[0, 0, :, 0, 0].tolist() == [GENERATE] * 6 + [KEEP] + [GENERATE]
    assert np.allclose(layout.clip_image / 255.0, resized(picture(3)).permute(1, 2, 0).numpy())


def test_start_and_end_images_keep_the_original_layout():
    """image=/end_image= as the original lays them out, written by hand: the start frame repeated,
    the end frame last, mask 0 on both."""
    start, end = picture(4), picture(5)
    layout = frames_from_images(start, end, frames=8, height=32, width=32)
    want = resized(start)[:, None].repeat(1, 8, 1, 1)
    want[:, -1] = resized(end)
    assert torch.equal(layout.video[0], want)
    assert layout.mask[0, 0, :, 0, 0].tolist() == [KEEP] + [GENERATE] * 6 + [KEEP]
    alone = frames_from_images(start, None, frames=8, height=32, width=32)
    assert alone.video.stride(2) == 0  # broadcast, not copied: the training workers build one per clip
    assert torch.equal(alone.video[0], resized(start)[:, None].expand(-1, 8, -1, -1))


def test_the_keyframe_list_and_the_shorthand_make_the_same_video(pans):
    start, end = picture(6, 64), picture(7, 64)
    short = pans(start, end, frames=8, seed=3, **KW)
    listed = pans(keyframes=[{"image": start, "frame": 0}, {"image": end, "frame": 7}], frames=8, seed=3, **KW)
    assert torch.equal(short, listed)


def test_a_middle_keyframe_changes_the_conditioning_only_at_its_latent_frame(pans):
    """The pixel-space codec encodes each latent frame alone, so only latent frame 2 (frames 8-11)
    of the inpainting input may change; the model then sees it."""
    start, middle = picture(8, 64), picture(9, 64)
    request = pans.check_inputs(start, frames=16, seed=0, camera="auto", motion="auto", base_resolution=384,
                                video_size=[64, 64], steps=2, cfg=4.0)  # fmt: skip
    plain = pans.encode_keyframes(request.keyframes, request, frames=16).inpaint_latents
    keys = merge_keyframes(start, None, [Keyframe(middle, 9)], frames=16)
    marked = pans.encode_keyframes(keys, request, frames=16).inpaint_latents
    changed = [i for i in range(4) if not torch.equal(plain[:, :, i], marked[:, :, i])]
    assert changed == [2]
    a = pans(start, frames=16, seed=1, **KW)
    b = pans(start, keyframes=[{"image": middle, "frame": 9}], frames=16, seed=1, **KW)
    assert not torch.equal(a, b) and b.shape == (1, 3, 16, 64, 64)


def test_keyframes_alone_make_a_video_without_a_start_image(pans):
    video = pans(keyframes=[(picture(10, 64), 3)], frames=8, seed=0, **KW)
    assert video.shape == (1, 3, 8, 64, 64)
    with pytest.raises(InputError, match="a start image is required"):
        pans(None, frames=8, **KW)


# -- the checks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("keys", "words"), [
    ([(picture(0), 8)], "keyframes[0] is at frame 8, outside the video's 8 frames (0..7)"),
    ([(picture(0), 2), (picture(1), 2)], "keyframes[0] and keyframes[1] are both at frame 2"),
    ([(picture(0), 0)], "keyframes[0] and image are both at frame 0"),
])  # fmt: skip
def test_positions_outside_the_video_or_shared_are_refused(keys, words):
    with pytest.raises(InputError) as err:
        merge_keyframes(picture(2), None, parse_keyframes(keys), frames=8)
    assert words in str(err.value)


@pytest.mark.parametrize(("entries", "error", "words"), [
    ("a.png", ConfigError, "is not a list"),
    ([{"image": "a.png"}], ConfigError, "must have exactly the keys image and frame"),
    ([{"image": "a.png", "frame": 1.5}], ConfigError, "keyframes[0].frame=1.5 must be an integer"),
    ([{"image": None, "frame": 1}], InputError, "keyframes[0] has no image"),
])  # fmt: skip
def test_malformed_entries_say_what_a_keyframe_is(entries, error, words):
    with pytest.raises(error) as err:
        parse_keyframes(entries)
    assert words in str(err.value)


def test_a_conditioning_without_prepare_keyframes_is_refused_for_keyframes(pans, monkeypatch):
    class StartEndOnly:
        def prepare(self, *args, **kwargs):
            return StartEndFrames().prepare(*args, **kwargs)

    monkeypatch.setattr(pans, "image_conditioning", StartEndOnly())
    with pytest.raises(ConfigError, match="takes a start and an end frame only"):
        pans(picture(0, 64), keyframes=[(picture(1, 64), 4)], frames=8, **KW)


# -- training masks --------------------------------------------------------------------------------------
def test_random_known_frame_masks_are_the_four_kinds():
    from ruyi.training.inputs import sample_known_frames

    torch.manual_seed(0)
    every = {sample_known_frames({"start": 1, "start_end": 1, "prefix": 1, "keyframes": 1}, 16) for _ in range(200)}
    assert (0,) in every and (0, 15) in every and tuple(range(8)) in every
    prefixes = {sample_known_frames({"prefix": 1}, 16) for _ in range(100)}
    assert prefixes == {tuple(range(4)), tuple(range(8)), tuple(range(12))}  # whole latent frames, never all
    keys = [sample_known_frames({"keyframes": 1}, 16) for _ in range(200)]
    assert all(k[0] == 0 and list(k) == sorted(set(k)) for k in keys)
    # frame 0 or a continued prefix of 4, 8 or 12 frames, then 1-2 frames after it
    assert {len(k) for k in keys} <= {2, 3, 5, 6, 9, 10, 13, 14} and {2, 3, 5, 6} <= {len(k) for k in keys}
    assert any(0 < f < 15 and f % 4 for k in keys for f in k[1:])  # anywhere, not only on latent frames
    assert {sample_known_frames({"prefix": 1}, 8) for _ in range(20)} == {(0, 1, 2, 3)}


def test_conditioned_clips_lay_out_the_sampled_mask():
    from ruyi.training.data import ProceduralPans
    from ruyi.training.inputs import ConditionedClips

    data = ProceduralPans(frames=16, height=32, width=32, bank_size=4, length=8)
    clips = ConditionedClips(data, StartEndFrames(), known_frames={"keyframes": 1})
    torch.manual_seed(1)
    for index in range(4):
        item = clips[index]
        known = [int(f) for f in item["known"].split(",")]
        kept = (item["cond_mask"][0, :, 0, 0] == 0).nonzero().flatten().tolist()
        assert kept == known
        for f in known:
            assert torch.equal(item["cond_video"][:, f], item["video"][:, f])
        assert item["with_end"] == (15 in known)


def test_the_keyframes_recipe_fine_tunes_the_zoom_model_with_masks():
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        cfg = compose("train", overrides=["experiment=tiny_keyframes", "output_dir=/x"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["model"]["path"] == "runs/tiny_zooms/checkpoint" and not plain["model"]["create_if_missing"]
    assert {"zoom_in", "zoom_out"} < set(plain["data"]["cameras"])  # the zooms it was taught stay in the data
    assert plain["finetune"]["_target_"].endswith("FullFinetune") and plain["data"]["frames"] == 16
    assert plain["data"]["frames"] == plain["model"]["run"]["segment_frames"]
    assert set(plain["known_frames"]) == {"start", "start_end", "prefix", "keyframes"} and plain["end_frame_prob"] == 0


# -- ComfyUI and the metric ------------------------------------------------------------------------------
def test_comfyui_keyframes_node_places_images_at_frames():
    from comfyui.keyframes import place_keyframes

    images = torch.rand(2, 16, 16, 3)
    placed = place_keyframes(images, "30, 60")
    assert [p["frame"] for p in placed] == [30, 60] and placed[1]["image"].shape == (16, 16, 3)
    more = place_keyframes(images[:1], "90", placed)
    assert [p["frame"] for p in more] == [30, 60, 90]
    assert parse_keyframes(list(more))[2].frame == 90
    with pytest.raises(InputError, match="frames lists 1 index"):
        place_keyframes(images, "30")
    with pytest.raises(InputError, match="frame indices"):
        place_keyframes(images, "30, x")


def test_keyframe_match_scores_the_frame_against_its_image():
    from ruyi.eval import evaluate

    video = np.stack([picture(i, 32) for i in range(8)])
    exact = evaluate(video, keyframes=[(video[5], 5)], metrics=["keyframe_match"])
    assert exact["keyframe_psnr"] == 100.0
    other = evaluate(video, keyframes=[(video[5], 5), (video[1], 6)])
    assert other["keyframe_psnr_min"] < 15 < other["keyframe_psnr"]
    with pytest.raises(InputError, match="outside the video"):
        evaluate(video, keyframes=[(video[0], 8)])
