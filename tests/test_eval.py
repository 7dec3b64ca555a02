"""ruyi.eval: each metric on videos whose answer is known by construction, and the CLI's contract."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from ruyi.errors import InputError
from ruyi.eval import RESULT_KEYS, evaluate, motion_rank_correlation
from ruyi.eval.cli import main as eval_main
from ruyi.io import write_mp4
from ruyi.registry import METRICS


def smooth_canvas(size: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = Image.fromarray((rng.random((size // 2, size // 2, 3)) * 255).astype(np.uint8))
    return np.asarray(noise.resize((size, size), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2)))


def pan(dx: int, dy: int, frames: int = 8, side: int = 64) -> np.ndarray:
    """The content moves by (dx, dy) px per frame: the window slides by (-dx, -dy) over a canvas."""
    canvas, c = smooth_canvas(), 68
    return np.stack([canvas[c - i * dy : c - i * dy + side, c - i * dx : c - i * dx + side] for i in range(frames)])


# content motion -> the camera move it means (film convention), written out by hand
PANS = {"left": (3, 0), "right": (-3, 0), "up": (0, 3), "down": (0, -3), "static": (0, 0)}


@pytest.mark.parametrize("camera", sorted(PANS))
def test_camera_direction_follows_the_film_convention(camera):
    dx, dy = PANS[camera]
    result = evaluate(pan(dx, dy), camera=camera)
    assert result["camera_direction"] == camera
    assert result["camera_correct"] is True
    assert result["motion_px_per_frame"] == pytest.approx(math.hypot(dx, dy), abs=0.5)


def test_a_pan_the_other_way_is_judged_wrong():
    result = evaluate(pan(3, 0), camera="right")
    assert result["camera_direction"] == "left" and result["camera_correct"] is False


def test_camera_auto_or_absent_is_not_judged():
    assert evaluate(pan(3, 0), camera="auto")["camera_correct"] is None
    assert evaluate(pan(3, 0))["camera_correct"] is None


def test_psnr_of_a_known_error_and_the_identical_cap():
    a = np.zeros((4, 32, 32, 3), np.uint8)
    b = np.full_like(a, 10)  # MSE 100 -> 10 log10(255^2 / 100) = 28.1308 dB
    assert evaluate(a, reference=b, metrics=["psnr"])["psnr"] == pytest.approx(28.1308, abs=1e-3)
    assert evaluate(a, reference=a.copy(), metrics=["psnr"])["psnr"] == 100.0


def test_ssim_is_one_for_identical_videos_and_lower_for_noise():
    video = pan(3, 0)
    assert evaluate(video, reference=video.copy(), metrics=["ssim"])["ssim"] == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(video + np.random.default_rng(1).normal(0, 40, video.shape), 0, 255).astype(np.uint8)
    assert evaluate(video, reference=noisy, metrics=["ssim"])["ssim"] < 0.6


def test_keyframe_fidelity_compares_first_and_last_frames_with_the_images():
    video = pan(3, 0)
    result = evaluate(video, image=video[0], end_image=video[-1], metrics=["keyframes"])
    assert result["start_frame_psnr"] == 100.0 and result["end_frame_psnr"] == 100.0
    other = evaluate(video, image=255 - video[0], metrics=["keyframes"])
    assert other["start_frame_psnr"] < 20 and other["end_frame_psnr"] is None


def test_keyframe_image_is_resized_as_the_pipeline_resizes_it():
    video = pan(0, 0)
    big = Image.fromarray(video[0]).resize((128, 128), Image.Resampling.BICUBIC)
    assert evaluate(video, image=big, metrics=["keyframes"])["start_frame_psnr"] > 30


def test_flicker_is_zero_for_a_clean_pan_and_grows_with_brightness_flicker():
    video = pan(2, 1)
    assert evaluate(video, metrics=["flicker"])["flicker"] < 0.5
    flashes = video.astype(np.int16) + np.array([0, 30] * 4)[:, None, None, None]
    flickering = np.clip(flashes, 0, 255).astype(np.uint8)
    assert evaluate(flickering, metrics=["flicker"])["flicker"] > 15


def test_every_result_has_every_key_and_says_why_a_metric_was_skipped():
    result = evaluate(pan(3, 0))
    assert set(RESULT_KEYS) <= set(result)
    assert result["psnr"] is None and result["skipped"]["psnr"] == "no reference video given"
    assert result["start_frame_psnr"] is None and "keyframes" in result["skipped"]


def test_lpips_without_local_weights_is_skipped_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    result = evaluate(pan(3, 0), reference=pan(3, 0), metrics=["lpips"])
    assert result["lpips"] is None
    assert "torchvision" in result["skipped"]["lpips"] or str(tmp_path) in result["skipped"]["lpips"]


def test_pipeline_float_video_and_uint8_frames_give_the_same_scores():
    frames = pan(3, 0)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 255.0
    assert evaluate(video, camera="left") == evaluate(frames, camera="left")


def test_motion_rank_correlation():
    assert motion_rank_correlation([1, 2, 3, 4], [0.5, 1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert motion_rank_correlation([1, 2, 3, 4], [4.0, 2.0, 1.0, 0.5]) == pytest.approx(-1.0)
    assert motion_rank_correlation(["auto", 2, 2], [1.0, 2.0, 3.0]) is None


def test_every_metric_is_registered_with_its_keys():
    assert set(METRICS.names()) >= {"psnr", "ssim", "lpips", "camera", "keyframes", "flicker"}
    keys = [k for name in METRICS.names() for k in METRICS.get(name).keys]
    assert sorted(keys) == sorted(RESULT_KEYS)


def test_bad_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        evaluate(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(InputError, match="not a readable video"):
        evaluate(tmp_path / "bad.mp4")
    with pytest.raises(InputError, match="reference has 4 frames"):
        evaluate(pan(3, 0), reference=pan(3, 0, frames=4))
    with pytest.raises(InputError, match="camera='sideways' is not one of"):
        evaluate(pan(3, 0), camera="sideways")


# -- the command line --------------------------------------------------------------------------
def _mp4(frames: np.ndarray, path) -> str:
    write_mp4(torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 255.0, path)
    return str(path)


def test_cli_writes_one_json_object_with_every_key(tmp_path, capsys):
    video = _mp4(pan(3, 0), tmp_path / "v.mp4")
    start = tmp_path / "start.png"
    Image.fromarray(pan(3, 0)[0]).save(start)
    out = tmp_path / "r.json"
    assert eval_main([video, "--reference", video, "--image", str(start), "--camera", "left", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(RESULT_KEYS) <= set(result)
    assert result["psnr"] == 100.0 and result["camera_direction"] == "left" and result["camera_correct"] is True
    assert result["start_frame_psnr"] > 30  # the codec's loss only
    assert "camera_direction" in capsys.readouterr().out


def test_cli_reads_a_folder_of_frames(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(pan(0, 3)):
        Image.fromarray(frame).save(folder / f"frame_{i:04d}.png")
    out = tmp_path / "r.json"
    assert eval_main([str(folder), "--camera", "up", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["camera_direction"] == "up"


@pytest.mark.parametrize("args, words", [
    (["{missing}"], "does not exist"),
    (["{bad}"], "not a readable video"),
    (["{video}", "--reference", "{short}"], "reference has 4 frames"),
    (["{video}", "--camera", "sideways"], "camera='sideways' is not one of"),
    (["{video}", "--json", "{folder}"], "is a folder"),
])  # fmt: skip
def test_cli_bad_inputs_are_one_line_and_exit_2_and_write_nothing(tmp_path, args, words):
    paths = {"missing": tmp_path / "missing.mp4", "bad": tmp_path / "bad.mp4", "folder": tmp_path}
    paths["bad"].write_text("not a video")
    paths["video"] = _mp4(pan(3, 0), tmp_path / "v.mp4")
    paths["short"] = _mp4(pan(3, 0, frames=4), tmp_path / "short.mp4")
    out = tmp_path / "result.json"
    argv = [a.format(**paths) for a in args] + ([] if "--json" in args else ["--json", str(out)])
    proc = subprocess.run([sys.executable, "-m", "ruyi", "eval", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
    assert not out.exists()


def test_python_m_ruyi_help_and_list():
    proc = subprocess.run([sys.executable, "-m", "ruyi", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "eval" in proc.stdout and "list" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ruyi", "list"], capture_output=True, text=True)
    assert proc.returncode == 0 and "metric:" in proc.stdout and "camera" in proc.stdout


def test_ssim_agrees_with_torchmetrics_on_luma():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    video = pan(3, 0)
    noisy = np.clip(video + np.random.default_rng(2).normal(0, 20, video.shape), 0, 255).astype(np.uint8)
    luma = torch.tensor([0.299, 0.587, 0.114])

    def y(frames):
        return (torch.from_numpy(frames).float() / 255.0 @ luma)[:, None]

    expected = float(tm_ssim(y(video), y(noisy), data_range=1.0))
    # the two crop the window's border differently: ~1 % apart on 64 px frames, 1e-5 on 768 px
    assert evaluate(video, reference=noisy, metrics=["ssim"])["ssim"] == pytest.approx(expected, abs=1e-2)
