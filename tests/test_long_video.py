"""Long videos by continuation: the segment plan, what each segment is conditioned on, per-segment
cameras, the streamed mp4, memory=auto's plan and the seam metric (issue 25, item 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ruyi.conditioning.keyframes import Keyframe, max_video_frames, plan_segments
from ruyi.errors import ConfigError

KW = dict(video_size=[64, 64], steps=2, progress=False, motion="2")


@pytest.fixture(scope="module")
def pans():
    from ruyi.assembly import load_pipeline

    return load_pipeline("ruyi_tiny_pans")


# -- the plan ----------------------------------------------------------------------------------------
def test_four_segments_of_sixteen_overlapping_by_two_latent_frames():
    plan = plan_segments(40, segment_frames=16, overlap=2)
    assert [(s.start, s.frames, s.known, s.keep) for s in plan] == [(0, 16, 0, 16), (8, 16, 8, 8), (16, 16, 8, 8), (24, 16, 8, 8)]


@pytest.mark.parametrize(("segment_frames", "overlap"), [(8, 1), (16, 1), (16, 2), (16, 3), (48, 2), (48, 3), (120, 2)])
def test_every_frame_is_made_once_by_a_segment_the_vae_takes(segment_frames, overlap):
    for frames in range(8, max_video_frames(segment_frames, overlap) + 1, 8):
        plan = plan_segments(frames, segment_frames=segment_frames, overlap=overlap)
        assert sum(s.keep for s in plan) == frames and len(plan) <= 10
        made = 0
        for s in plan:
            assert s.frames % 8 == 0 and s.frames <= segment_frames and s.known + s.keep <= s.frames
            assert s.start + s.known == made  # each segment continues exactly where the video stands
            assert s.known == (0 if s.index == 0 else 4 * overlap)
            made += s.keep


def test_a_keyframe_belongs_to_the_first_segment_that_makes_its_frame():
    keys = [Keyframe("a", 0), Keyframe("b", 12), Keyframe("c", 20), Keyframe("d", 39)]
    plan = plan_segments(40, segment_frames=16, overlap=2, keyframes=keys)
    assert [[(k.image, k.frame) for k in s.keyframes] for s in plan] == [[("a", 0), ("b", 12)], [("c", 12)], [], [("d", 15)]]


def test_frames_beyond_the_maximum_say_what_it_is_and_why(pans):
    with pytest.raises(ConfigError) as err:
        pans(np.zeros((64, 64, 3), np.uint8), frames=96, **KW)  # 16-frame segments: at most 16 + 9 x 8 = 88
    assert "frames=96 is beyond the maximum 88: 10 segments of 16 frames" in str(err.value)
    assert "errors add up" in str(err.value)


# -- the pipeline ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlap_frames", ["next", "previous"])
def test_the_first_segment_is_the_single_segment_video_and_the_next_continue_from_its_end(pans, monkeypatch, overlap_frames):
    from ruyi.io import procedural_image, to_frames

    image = procedural_image(96, 64)
    seen, made = [], []
    real_encode, real_segment = pans.encode_keyframes, pans.generate_segment

    def spy(keyframes, request, *, frames):
        seen.append([(k.frame, np.asarray(k.image).copy()) for k in keyframes])
        return real_encode(keyframes, request, frames=frames)

    def segment(*args, **kwargs):
        made.append(real_segment(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(pans, "encode_keyframes", spy)
    monkeypatch.setattr(pans, "generate_segment", segment)
    long = pans(image, frames=24, seed=5, camera=["left", "up"], overlap_frames=overlap_frames, **KW)
    first, second = made
    single = pans(image, frames=16, seed=5, camera="left", **KW)
    assert long.shape == (1, 3, 24, 64, 64) and torch.equal(first, single)
    # segment 2 is conditioned on frames 8-15 as segment 1 made them, whichever copy the video keeps
    assert [f for f, _ in seen[1]] == list(range(8))
    for (_, known), want in zip(seen[1], to_frames(first)[8:16]):
        assert np.array_equal(known, want)
    if overlap_frames == "previous":  # segment 1's 16 frames, then segment 2's 8 new ones
        assert torch.equal(long[:, :, :16], first) and torch.equal(long[:, :, 16:], second[:, :, 8:])
    else:  # segment 1's first 8 frames, then all 16 of segment 2 (its redrawn copies of frames 8-15 first)
        assert torch.equal(long[:, :, :8], first[:, :, :8]) and torch.equal(long[:, :, 8:], second)


def test_the_kept_frames_tile_the_video_once_in_order_and_the_seams_sit_where_they_meet():
    from ruyi.conditioning.keyframes import kept_frames, seam_pairs

    plan = plan_segments(40, segment_frames=16, overlap=2)
    assert kept_frames(plan, "next") == [(0, 8), (0, 8), (0, 8), (0, 16)]
    # where segments meet (7, 15, 23), and where the last one's copies meet its new frames (31)
    assert seam_pairs(plan, "next") == [7, 15, 23, 31]
    assert kept_frames(plan, "previous") == [(0, 16), (8, 16), (8, 16), (8, 16)]
    assert seam_pairs(plan, "previous") == [15, 23, 31]
    for segment_frames, overlap in [(8, 1), (16, 1), (16, 3), (48, 2), (120, 2)]:
        for frames in range(8, max_video_frames(segment_frames, overlap) + 1, 8):
            plan = plan_segments(frames, segment_frames=segment_frames, overlap=overlap)
            for mode in ("next", "previous"):
                covered = [s.start + i for s, (a, b) in zip(plan, kept_frames(plan, mode)) for i in range(a, b)]
                assert covered == list(range(frames)), (segment_frames, overlap, frames, mode)
    with pytest.raises(ConfigError, match="overlap_frames='both' is not one of next, previous"):
        kept_frames(plan, "both")


def test_overlap_frames_is_checked_before_weights_load():
    from ruyi.conditioning.request import validate_request

    with pytest.raises(ConfigError, match="segment.overlap_frames='last' is not one of next, previous"):
        validate_request(np.zeros((64, 64, 3), np.uint8), control=None, sampler=None, frames=40, base_resolution=64,
                         video_size=[64, 64], steps=2, cfg=1, seed=0, camera="left", motion="2", segment_frames=16,
                         overlap_frames="last")  # fmt: skip


def test_each_segment_gets_its_own_camera(pans, monkeypatch):
    from ruyi.io import procedural_image

    asked = []
    real = pans.control.select
    monkeypatch.setattr(pans.control, "select", lambda camera, motion: asked.append((camera, motion)) or real(camera, motion))
    pans(procedural_image(), frames=40, camera=["left", "up", "right", "down"], motion=["1", "2", "3", "4"],
         video_size=[64, 64], steps=2, progress=False)  # fmt: skip
    assert asked == [("left", "1"), ("up", "2"), ("right", "3"), ("down", "4")]
    with pytest.raises(ConfigError, match="camera lists 2 value"):
        pans(procedural_image(), frames=40, camera=["left", "up"], **KW)


def test_the_sink_gets_each_segments_kept_frames_and_nothing_is_returned(pans):
    from ruyi.io import procedural_image

    image = procedural_image()
    chunks = []
    assert pans(image, frames=32, seed=2, sink=chunks.append, **KW) is None
    assert [c.shape[2] for c in chunks] == [16, 8, 8]
    assert torch.equal(torch.cat(chunks, dim=2), pans(image, frames=32, seed=2, **KW))
    chunks.clear()
    assert pans(image, frames=32, seed=2, sink=chunks.append, overlap_frames="next", **KW) is None
    assert [c.shape[2] for c in chunks] == [8, 8, 16]  # each gives up its last 8 frames to the next one's copies
    assert torch.equal(torch.cat(chunks, dim=2), pans(image, frames=32, seed=2, overlap_frames="next", **KW))
    with pytest.raises(Exception, match="one segment"):
        pans(image, frames=32, output_latents=True, **KW)


def test_cli_streams_a_long_video_into_one_mp4_of_exactly_frames(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from ruyi.io import read_mp4

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "long.mp4"
    (tmp_path / "old.mp4").write_bytes(b"x")
    cmd = [sys.executable, str(repo / "scripts" / "infer.py"), f"output={out}", "frames=40", "camera=[left,left,up,up]",
           "steps=2", "progress=false"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**__import__("os").environ,
                            "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    frames, fps = read_mp4(out)
    assert frames.shape == (40, 64, 64, 3) and fps == 24
    assert "40 frames in 4 segments" in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4", "old.mp4", "outputs"]  # no temporary file left


def test_a_failed_stream_leaves_the_old_video_and_no_temporary_file(tmp_path):
    from ruyi.io import video_stream

    out = tmp_path / "v.mp4"
    out.write_bytes(b"an earlier video")
    with pytest.raises(RuntimeError, match="segment 2 failed"):
        with video_stream(out) as write:
            write(torch.rand(1, 3, 8, 32, 32))
            raise RuntimeError("segment 2 failed")
    assert out.read_bytes() == b"an earlier video" and [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    with video_stream(out) as write:
        for _ in range(3):
            write(torch.rand(1, 3, 8, 32, 32))
    from ruyi.io import read_mp4

    assert read_mp4(out)[0].shape == (24, 32, 32, 3)


def test_memory_auto_plans_for_one_segment():
    from ruyi.memory.auto import MemoryAuto

    assert MemoryAuto(frames=400, segment_frames=120).frames == 120
    assert MemoryAuto(frames=48, segment_frames=120).frames == 48
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    configs = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        cfg = compose("infer", overrides=["model=ruyi_mini_7b", "memory=auto", "frames=400"])
    assert cfg.memory.frames == 400 and cfg.memory.segment_frames == 120


# -- training clips that turn after a known prefix ---------------------------------------------------------
def moved(a: np.ndarray, b: np.ndarray, dx: int, dy: int) -> bool:
    """Whether frame ``b`` is frame ``a`` with its content moved by (dx, dy) px (where both see it)."""
    h, w = a.shape[:2]
    return np.array_equal(a[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)],
                          b[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)])  # fmt: skip


def test_turning_clips_pan_one_way_then_the_labelled_way_and_condition_on_the_turn():
    from ruyi.conditioning.image import StartEndFrames
    from ruyi.conditioning.control import MOVES
    from ruyi.training.data.procedural import ProceduralPans
    from ruyi.training.inputs import ConditionedClips

    data = ProceduralPans(frames=16, height=48, width=48, bank_size=4, length=40, turn_prob=1.0, auto_prob=0.0)
    turned = 0
    for index in range(12):
        item = data[index]
        head, frames = item["known_prefix"], item["video"].permute(1, 2, 3, 0).numpy()
        assert head in (4, 8, 12)
        speed = data.speeds[int(item["motion"]) - 1]
        dx, dy = speed * MOVES[item["camera"]].dx, speed * MOVES[item["camera"]].dy
        # from the turn on, the labelled pan at its speed, pixel for pixel
        assert all(moved(frames[f], frames[f + 1], dx, dy) for f in range(head - 1, 15))
        turned += not moved(frames[0], frames[1], dx, dy)  # before it, mostly another pan
    assert turned >= 6
    clips = ConditionedClips(data, StartEndFrames(), known_frames={"start": 1})
    item = clips[3]
    assert item["known"] == ",".join(str(i) for i in range(data[3]["known_prefix"])) and "known_prefix" not in item
    with pytest.raises(ConfigError, match="known_frames is null"):
        ConditionedClips(data, StartEndFrames())[0]


# -- the seam metric --------------------------------------------------------------------------------------
def smooth_pan(frames: int, step: int = 2, side: int = 48) -> np.ndarray:
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    canvas = Image.fromarray((rng.random((80, 200, 3)) * 255).astype(np.uint8)).resize((400, 160), Image.Resampling.BICUBIC)
    canvas = np.asarray(canvas.filter(ImageFilter.GaussianBlur(2)))
    return np.stack([canvas[40 : 40 + side, 300 - i * step : 300 - i * step + side] for i in range(frames)])


def test_seam_jump_is_one_for_a_smooth_pan_and_large_for_a_jump_at_a_seam():
    from ruyi.eval import evaluate

    video = smooth_pan(40)
    smooth = evaluate(video, camera="left", segment_frames=16, overlap=2, metrics=["segments"])
    assert smooth["segments"] == 4 and smooth["segment_cameras"] == ["left"] * 4
    assert smooth["segment_camera_correct"] == 1.0 and smooth["seam_jump"] == pytest.approx(1.0, abs=0.3)
    jumped = video.copy()
    jumped[16:] = smooth_pan(40, side=48)[16 - 8 : 40 - 8]  # the third segment starts 8 frames back
    result = evaluate(jumped, camera="left,left,left,left", segment_frames=16, overlap=2, metrics=["segments"])
    assert result["seam_jump"] > 2 and result["seam_change"] > smooth["seam_change"] + 0.5
    turned = evaluate(video, camera="left,up,left,left", segment_frames=16, overlap=2)
    assert turned["segment_camera_correct"] == 0.75 and turned["camera_correct"] is None

