"""Writing videos and frames atomically: a failed write leaves no partial file behind.

Data-safety rule (README, "Your files are safe"): ruyi never deletes or overwrites anything it
did not create in this run, except an output FILE the user named (a ``.mp4``, replaced
atomically). A frames folder must be new or empty; ``overwrite=true`` lets it replace only the
``frame_NNNN.png`` files in it. Output problems are found before any model loads
(:func:`check_output_path`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ruyi.checks import check_number
from ruyi.errors import OutputError

VIDEO_SUFFIX = ".mp4"
MAX_FPS = 240
FRAME_NAME = "frame_{:04d}.png"
FRAME_PATTERN = re.compile(r"frame_(\d{4,})\.png")
# names that look like a file: a folder of PNG frames called "clip.gif" is surely a mistake
NOT_FOLDER_SUFFIXES = {".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".png", ".jpg", ".jpeg", ".webp"}


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


def is_video_file(path: str | Path) -> bool:
    """``.mp4`` names a video file; any other output names a folder of PNG frames."""
    return Path(path).suffix.lower() == VIDEO_SUFFIX


def check_output_path(path: str | Path, *, overwrite: bool = False) -> Path:
    """Fail before any work if the output cannot be written, or writing it would destroy files.

    A ``.mp4`` is a file the user named: an existing one is replaced (atomically) at the end. A
    frames folder must be new or empty; with ``overwrite`` an existing folder may also hold
    ``frame_*.png`` files (they are replaced), but nothing else. The folder that will receive the
    output is probed by creating and removing a file in it, so a read-only location fails now,
    not after the whole generation.
    """
    path = Path(path)
    if str(path) in ("", "."):
        path = Path.cwd()
    if is_video_file(path):
        if path.is_dir():
            raise OutputError(f"output={path} is a folder; give a file path ending in .mp4")
    else:
        if path.suffix.lower() in NOT_FOLDER_SUFFIXES:
            raise OutputError(
                f"output={path}: only .mp4 videos or folders of PNG frames are written; "
                f"use {path.with_suffix(VIDEO_SUFFIX).name} or a folder name without an extension"
            )
        if path.exists() and not path.is_dir():
            raise OutputError(f"output={path} is an existing file; PNG frames need a new or empty folder (or a .mp4 path)")
        if path.is_dir():
            _check_frames_folder(path, overwrite)
    _probe_writable(path, _receiving_folder(path))
    return path


def _check_frames_folder(folder: Path, overwrite: bool) -> None:
    """Refuse a folder holding anything the frames would mix with or replace."""
    entries = sorted(folder.iterdir())
    if not overwrite and entries:
        raise OutputError(
            f"output={folder} is a folder that is not empty ({len(entries)} entries, e.g. {entries[0].name}); "
            "PNG frames go into a new or empty folder: pick another output (overwrite=true replaces only "
            "frame_*.png files)"
        )
    others = [p for p in entries if not (FRAME_PATTERN.fullmatch(p.name) and p.is_file() and not p.is_symlink())]
    if others:
        raise OutputError(
            f"output={folder} holds files other than frame_*.png (e.g. {others[0].name}); overwrite=true only "
            "replaces frames, so pick a new or empty folder"
        )


def _receiving_folder(path: Path) -> Path:
    """The nearest existing folder the output (or the folders leading to it) will be created in."""
    start = path if path.is_dir() else path.parent
    for folder in (start, *start.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"output={path}: {folder} is a file, not a folder")
            return folder
    return Path(path.anchor or ".")


def _probe_writable(path: Path, folder: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".ruyi-probe-", dir=folder)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(f"output={path}: cannot write in {folder} ({reason}); pick a writable location") from None
    os.close(fd)
    os.unlink(probe)


def check_fps(fps: float) -> float:
    return check_number("fps", fps, low=0, low_open=True, high=MAX_FPS, hint="the model makes 24 fps videos")


@contextmanager
def atomic_file(path: Path, *, suffix: str) -> Iterator[str]:
    """A temporary file name beside ``path``: renamed onto ``path`` when the block ends, removed if
    it fails, so a failed or interrupted write never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, umask_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_mp4(video: torch.Tensor, path: str | Path, *, fps: float = 24) -> Path:
    """Encode ``video`` as H.264 mp4 through imageio-ffmpeg, via a temp file renamed into place."""
    import imageio_ffmpeg

    fps = check_fps(fps)
    frames = to_frames(video)
    path = check_output_path(path)
    height, width = frames.shape[1:3]
    with atomic_file(path, suffix=".mp4") as tmp:
        writer = imageio_ffmpeg.write_frames(
            tmp, (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=8,
            macro_block_size=1, ffmpeg_log_level="error",
        )  # fmt: skip
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    return path


def write_pngs(video: torch.Tensor, folder: str | Path, *, overwrite: bool = False) -> Path:
    """One PNG per frame (``frame_0000.png`` ...) in ``folder``: a new folder, an empty one, or with
    ``overwrite`` one holding only frames (older frames past this video's end are removed).

    The frames are encoded into a temporary folder first: a new folder is renamed into place in
    one step; an existing one (the user's, kept as it is) receives the finished files.
    """
    frames = to_frames(video)
    folder = check_output_path(folder, overwrite=overwrite)  # again: the folder may have changed during the run
    existing = folder.is_dir()
    if existing:
        tmp = Path(tempfile.mkdtemp(prefix=".ruyi-frames-", dir=folder))
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / FRAME_NAME.format(i))
        if not existing:
            return publish_folder(tmp, folder)
        for name in sorted(p.name for p in tmp.iterdir()):
            os.chmod(tmp / name, umask_mode(directory=False))
            os.replace(tmp / name, folder / name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only the temporary folder this call made
        raise
    for stale in folder.iterdir():  # frames of a longer earlier video (only with overwrite: else it was empty)
        match = FRAME_PATTERN.fullmatch(stale.name)
        if match and int(match.group(1)) >= len(frames) and stale.is_file():
            stale.unlink()
    return folder


def publish_folder(tmp: str | Path, target: str | Path) -> Path:
    """Move a finished temporary folder to ``target``, which must not exist or be an empty folder.

    Files get the modes a plain ``open`` would give (``mkstemp``/``mkdtemp`` and safetensors use
    0600/0700). Never replaces a folder with content: that is the user's data.
    """
    tmp, target = Path(tmp), Path(target)
    for item in (tmp, *tmp.rglob("*")):
        if not item.is_symlink():
            os.chmod(item, umask_mode(directory=item.is_dir()))
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()  # fails rather than deletes if something appeared in it meanwhile
    try:
        os.rename(tmp, target)
    except OSError as err:
        raise OutputError(f"{target} appeared while it was being written ({err.strerror}); nothing was replaced") from None
    return target


def write_video(video: torch.Tensor, output: str | Path, *, fps: float = 24, overwrite: bool = False) -> Path:
    """``.mp4`` -> a video file (replaced if it exists); anything else -> a folder of PNG frames."""
    if is_video_file(output):
        return write_mp4(video, output, fps=fps)
    return write_pngs(video, output, overwrite=overwrite)


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
