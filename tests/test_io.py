"""Video output: mp4 through imageio-ffmpeg and PNG frames, both written atomically."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ruyi import io


def _video(frames=16, height=64, width=48):
    g = torch.Generator().manual_seed(0)
    # smooth content so that H.264 keeps it close
    base = torch.linspace(0, 1, width)[None, None, None, :].expand(1, 3, frames, height, width).clone()
    base[:, 1] *= torch.linspace(0.2, 0.8, frames)[None, :, None, None]
    return (base + 0.02 * torch.rand(base.shape, generator=g)).clamp(0, 1)


def test_mp4_round_trip(tmp_path):
    video = _video()
    path = io.write_mp4(video, tmp_path / "sub" / "clip.mp4", fps=24)
    frames, fps = io.read_mp4(path)
    assert frames.shape == (16, 64, 48, 3) and fps == pytest.approx(24)
    expected = io.to_frames(video).astype(np.float32)
    assert np.abs(frames.astype(np.float32) - expected).mean() < 6.0
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["clip.mp4"]


def test_failed_mp4_write_leaves_nothing(tmp_path, monkeypatch):
    import imageio_ffmpeg

    def failing_writer(path, *args, **kwargs):
        def gen():
            with open(path, "wb") as f:
                f.write(b"partial")
            sent = 0
            while True:
                if (yield) is not None:
                    sent += 1
                    if sent == 3:
                        raise OSError("disk full")

        return gen()

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", failing_writer)
    with pytest.raises(OSError, match="disk full"):
        io.write_mp4(_video(), tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []


def test_png_frames(tmp_path):
    video = _video(frames=8)
    folder = io.write_video(video, tmp_path / "frames")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"frame_{i:04d}.png" for i in range(8)]
    first = np.asarray(Image.open(folder / names[0]))
    assert np.array_equal(first, io.to_frames(video)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_bad_video_shape_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"expected a video \(1, 3, F, H, W\)"):
        io.write_mp4(torch.zeros(3, 4, 8, 8), tmp_path / "x.mp4")
    assert list(tmp_path.iterdir()) == []


def test_output_path_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        io.check_output_path(tmp_path / "file" / "out.mp4")
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        io.check_output_path(tmp_path / "dir.mp4")


def test_procedural_image_is_deterministic():
    a, b = io.procedural_image(160, 96), io.procedural_image(160, 96)
    assert a.size == (160, 96) and np.array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(a).std() > 10  # not a flat colour
