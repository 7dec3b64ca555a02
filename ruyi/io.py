"""Writing videos and frames atomically: a failed write leaves no partial file behind.

The encoder's exit status is read and the written video's frames are counted before it replaces
anything (``ruyi.files`` holds the temporary-file, disk-full and interrupt handling all writes share).

Data-safety rule (README, "Your files are safe"): ruyi never deletes or overwrites anything it
did not create in this run, except an output FILE the user named (a ``.mp4``, replaced
atomically). A frames folder must be new or empty; ``overwrite=true`` lets it replace only the
``frame_NNNN.png`` files in it. Output problems are found before any model loads
(:func:`check_output_path`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from fractions import Fraction
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ruyi.checks import check_number
from ruyi.errors import OutputError
from ruyi.files import (
    atomic_file, check_free_space, fsync_path, make_parents, remove_created, signals_deferred, umask_mode, write_error,
)  # fmt: skip

VIDEO_SUFFIX = ".mp4"
MAX_FPS = 240
FRAME_NAME = "frame_{:04d}.png"
FRAME_PATTERN = re.compile(r"frame_(\d{4,})\.png")
# names that look like a file: a folder of PNG frames called "clip.gif" is surely a mistake
NOT_FOLDER_SUFFIXES = {".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".png", ".jpg", ".jpeg", ".webp"}


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
            # the frames are written into a temporary folder beside this one, then moved in
            _probe_writable(path, _receiving_folder(path.parent))
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


def ffmpeg_command(width: int, height: int, fps: float, target: str) -> list[str]:
    """H.264 mp4 from raw RGB frames on stdin: the command imageio-ffmpeg's writer runs (libx264,
    quality 8 = crf 10, yuv420p, no rescaling), run here so its exit status and errors are read."""
    import imageio_ffmpeg

    rate = str(Fraction(fps).limit_denominator())
    return [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
        "-pix_fmt", "rgb24", "-r", rate, "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "10",
        "-v", "error", "-f", "mp4", target,
    ]  # fmt: skip


# what ffmpeg prints for the OS errors that are the disk's, not ruyi's (it exits non-zero with them)
FFMPEG_OS_ERRORS = {
    "No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT, "File too large": errno.EFBIG,
    "Permission denied": errno.EACCES, "Read-only file system": errno.EROFS,
}  # fmt: skip


def encode_mp4(frames: np.ndarray, target: str, *, fps: float) -> None:
    """Encode uint8 frames (F, H, W, 3) into ``target``; a failed encoder raises (an ``OSError``
    with the errno for the disk's errors, else ``RuntimeError`` with ffmpeg's own words)."""
    height, width = frames.shape[1:3]
    raw = memoryview(np.ascontiguousarray(frames)).cast("B")
    # subprocess.run kills ffmpeg on any exception (an interrupt included) before re-raising; its own
    # session keeps a terminal's Ctrl-C for ruyi, which then stops it and removes the file
    proc = subprocess.run(ffmpeg_command(width, height, fps, target), input=raw, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False, start_new_session=True)  # fmt: skip
    _check_ffmpeg(proc.returncode, proc.stderr, target)


def _check_ffmpeg(returncode: int, stderr: bytes, target: str) -> None:
    said = stderr.decode(errors="replace").strip()
    if returncode == -getattr(signal, "SIGXFSZ", -1):  # the file-size limit kills ffmpeg silently
        raise OSError(errno.EFBIG, "File too large", target)
    if returncode != 0:
        for words, number in FFMPEG_OS_ERRORS.items():
            if words in said:
                raise OSError(number, words, target)
        raise RuntimeError(f"ffmpeg failed to encode {target} (exit status {returncode}): {said or 'no message'}")


def encoded_size(frames: np.ndarray, *, fps: float) -> int | None:
    """The bytes the mp4 of ``frames`` takes (encoded again into memory, for a disk-full message)."""
    height, width = frames.shape[1:3]
    command = ffmpeg_command(width, height, fps, "pipe:1")
    command[-3:-1] = ["-movflags", "frag_keyframe+empty_moov", "-f", "mp4"]  # mp4 on a pipe is fragmented
    try:
        proc = subprocess.run(command, input=memoryview(np.ascontiguousarray(frames)).cast("B"), capture_output=True)
    except OSError:
        return None
    return len(proc.stdout) if proc.returncode == 0 else None


def check_mp4(path: str, frames: int) -> None:
    """The written video holds every frame (counted by ffmpeg from the file, not by the encoder)."""
    import imageio_ffmpeg

    counted, _ = imageio_ffmpeg.count_frames_and_secs(path)
    if counted != frames:
        raise RuntimeError(f"the encoded video {path} holds {counted} of {frames} frames")


def write_mp4(video: torch.Tensor, path: str | Path, *, fps: float = 24) -> Path:
    """Encode ``video`` as H.264 mp4 into a temporary file beside ``path``; once ffmpeg has exited
    cleanly and the file holds every frame it replaces ``path``."""
    fps = check_fps(fps)
    frames = to_frames(video)
    path = check_output_path(path)
    with atomic_file(path, suffix=".mp4", what="the video", needed=lambda: encoded_size(frames, fps=fps)) as tmp:
        encode_mp4(frames, tmp, fps=fps)
        check_mp4(tmp, len(frames))
    return path


def png_bytes(frame: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pngs(video: torch.Tensor, folder: str | Path, *, overwrite: bool = False) -> Path:
    """One PNG per frame (``frame_0000.png`` ...) in ``folder``: a new folder, an empty one, or with
    ``overwrite`` one holding only frames (older frames past this video's end are removed).

    The frames are written into a temporary folder beside ``folder`` (never inside it: a killed run
    must not leave something there that later runs refuse), flushed, and then either renamed into
    place as a whole (a new folder) or moved into the existing one with SIGINT/SIGTERM held back, so
    an interrupt finds the folder as it was or complete.
    """
    return write_png_frames(to_frames(video), folder, overwrite=overwrite)


def write_png_frames(frames: np.ndarray, folder: str | Path, *, overwrite: bool = False) -> Path:
    """:func:`write_pngs` for uint8 frames (F, H, W, 3)."""
    folder = check_output_path(folder, overwrite=overwrite)  # again: the folder may have changed during the run
    existing = folder.is_dir()  # decided now: a folder another run creates meanwhile is never filled
    encoded = [png_bytes(frame) for frame in frames]
    needed = sum(len(data) for data in encoded)
    created = make_parents(folder.parent)
    tmp = None
    try:
        check_free_space(folder.parent, needed, what="the frames", target=folder)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        for i, data in enumerate(encoded):
            name = tmp / FRAME_NAME.format(i)
            name.write_bytes(data)
            if name.stat().st_size != len(data):
                raise OSError(errno.EIO, f"{name} holds {name.stat().st_size} of {len(data)} bytes")
            fsync_path(name)
        if not existing:
            return publish_folder(tmp, folder)  # refuses a folder that appeared with content meanwhile
        with signals_deferred():
            _check_frames_folder(folder, overwrite)  # at the last moment: another run may have filled it
            for name in sorted(p.name for p in tmp.iterdir()):
                os.chmod(tmp / name, umask_mode(directory=False))
                os.replace(tmp / name, folder / name)
            tmp.rmdir()
            for stale in folder.iterdir():  # frames of a longer earlier video (only with overwrite: else it was empty)
                match = FRAME_PATTERN.fullmatch(stale.name)
                if match and int(match.group(1)) >= len(frames) and stale.is_file():
                    stale.unlink()
            fsync_path(folder, directory=True)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # only the temporary folder this call made
        remove_created(created)
        mapped = write_error(err, folder, what="the frames", needed=needed)
        if mapped is not None:
            raise mapped from None
        raise
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
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise
        raise OutputError(f"{target} appeared while it was being written ({err.strerror}); nothing was replaced") from None
    fsync_path(target.parent, directory=True)
    return target


def write_video(video: torch.Tensor, output: str | Path, *, fps: float = 24, overwrite: bool = False) -> Path:
    """``.mp4`` -> a video file (replaced if it exists); anything else -> a folder of PNG frames."""
    if is_video_file(output):
        return write_mp4(video, output, fps=fps)
    return write_pngs(video, output, overwrite=overwrite)


@contextlib.contextmanager
def video_stream(output: str | Path, *, fps: float = 24, overwrite: bool = False) -> Iterator[Callable[[torch.Tensor], None]]:
    """``write(video (1, 3, n, H, W))`` for the block, as a long video's segments come: an mp4 is
    encoded as the frames arrive (only uint8 frames in flight), a frames folder receives them at
    the end (uint8 in memory meanwhile). Atomic and checked like :func:`write_video`: the output is
    replaced only when the block ends without error and every frame is in the file."""
    fps = check_fps(fps)
    if not is_video_file(output):
        kept: list[np.ndarray] = []
        yield lambda video: kept.append(to_frames(video))
        write_png_frames(np.concatenate(kept), output, overwrite=overwrite)
        return
    path = check_output_path(output)
    with atomic_file(path, suffix=".mp4", what="the video") as tmp, tempfile.TemporaryFile() as stderr:
        encoder: dict = {"proc": None, "frames": 0}

        def write(video: torch.Tensor) -> None:
            frames = to_frames(video)
            if encoder["proc"] is None:
                height, width = frames.shape[1:3]
                encoder["proc"] = subprocess.Popen(ffmpeg_command(width, height, fps, tmp), stdin=subprocess.PIPE,
                                                   stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)  # fmt: skip
            try:
                encoder["proc"].stdin.write(memoryview(np.ascontiguousarray(frames)).cast("B"))
            except BrokenPipeError:  # ffmpeg stopped: its exit status says why
                _finish(encoder["proc"], stderr, tmp)
                raise
            encoder["frames"] += len(frames)

        try:
            yield write
        except BaseException:
            if encoder["proc"] is not None:
                encoder["proc"].kill()
                encoder["proc"].wait()
            raise
        if encoder["proc"] is None:
            raise RuntimeError("no frames were written to the video stream")
        _finish(encoder["proc"], stderr, tmp)
        check_mp4(tmp, encoder["frames"])


def _finish(proc: subprocess.Popen, stderr, target: str) -> None:
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    proc.wait()
    stderr.seek(0)
    _check_ffmpeg(proc.returncode, stderr.read(), target)


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
