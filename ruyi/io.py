"""Writing videos and frames atomically: a failed write leaves no partial file behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ruyi.errors import OutputError


def umask_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def to_frames(video: torch.Tensor) -> np.ndarray:
    """video (1, 3, F, H, W) in [0, 1] -> uint8 frames (F, H, W, 3)."""
    if video.ndim != 5 or video.shape[0] != 1 or video.shape[1] != 3:
        raise ValueError(f"expected a video (1, 3, F, H, W), got {tuple(video.shape)}")
    frames = (video[0].permute(1, 2, 3, 0).clamp(0, 1) * 255).round()
    return frames.to(torch.uint8).cpu().numpy()


def check_output_path(path: str | Path) -> Path:
    """Fail before any work if the output cannot be written where asked."""
    path = Path(path)
    if path.exists() and path.is_dir() and path.suffix == ".mp4":
        raise OutputError(f"output={path} is a folder; give a file path ending in .mp4")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"output={path}: {parent} is a file, not a folder")
            break
    return path


def write_mp4(video: torch.Tensor, path: str | Path, *, fps: int = 24) -> Path:
    """Encode ``video`` as H.264 mp4 through imageio-ffmpeg, via a temp file renamed into place."""
    import imageio_ffmpeg

    frames = to_frames(video)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            tmp, (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=8,
            macro_block_size=1, ffmpeg_log_level="error",
        )  # fmt: skip
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        os.chmod(tmp, umask_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_pngs(video: torch.Tensor, folder: str | Path) -> Path:
    """One PNG per frame (``frame_0000.png`` ...) in ``folder``, written to a temp folder first."""
    frames = to_frames(video)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"frame_{i:04d}.png")
        if folder.exists():
            shutil.rmtree(folder)
        os.chmod(tmp, umask_mode(directory=True))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_video(video: torch.Tensor, output: str | Path, *, fps: int = 24) -> Path:
    """``.mp4`` -> a video file; anything else -> a folder of PNG frames."""
    output = Path(output)
    return write_mp4(video, output, fps=fps) if output.suffix.lower() == ".mp4" else write_pngs(video, output)


def read_mp4(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode an mp4 back to frames (F, H, W, 3) uint8 and its fps (used by tests and tools)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    return np.stack(frames), float(meta["fps"])


def procedural_image(width: int = 640, height: int = 360) -> Image.Image:
    """A procedurally drawn start frame (sky, sun, hills), so the default run needs no assets."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width, y / height
    sky = np.stack([0.35 + 0.3 * v, 0.55 + 0.25 * v, 0.95 - 0.2 * v], axis=-1)
    sun = np.exp(-(((u - 0.72) ** 2) + ((v - 0.3) ** 2)) / 0.004)[..., None] * np.array([1.0, 0.85, 0.4])
    ridge = 0.62 + 0.08 * np.sin(u * 9.0) + 0.04 * np.sin(u * 23.0 + 1.0)
    ground = (v > ridge)[..., None]
    green = np.stack([0.15 + 0 * v, 0.35 + 0.3 * (1 - v), 0.18 + 0 * v], axis=-1)
    image = np.where(ground, green, np.clip(sky + sun, 0, 1))
    return Image.fromarray((image * 255).astype(np.uint8))
