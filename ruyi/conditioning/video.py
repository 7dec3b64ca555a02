"""The input video of video-to-video: checked before any weights load, read one segment at a time.

``video=`` is a file ffmpeg reads (mp4, mov, webm...) or, from Python, frames ``(F, H, W, 3)``
(uint8, or float in [0, 1]). :func:`open_video` reads the first frame and counts the frames
(ffmpeg decodes the file once without keeping anything), so an unreadable or empty file fails
before the weights load; :class:`VideoReader` then decodes the frames in order, keeping only those a
later segment still needs, and resizes them as the keyframes are resized (PIL bicubic).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ruyi.errors import InputError

USAGE = "give an mp4 (or any video ffmpeg reads)"


@dataclass(frozen=True)
class InputVideo:
    """A checked input video: ``frames`` frames of ``size`` (width, height); ``first``: frame 0 (H, W, 3) uint8."""

    source: Any  # a path (str) or uint8 frames (F, H, W, 3)
    frames: int
    size: tuple[int, int]
    first: np.ndarray
    name: str = "video"

    @property
    def label(self) -> str:
        """How messages name it: ``video=<path>``, or ``video`` for frames given from Python."""
        return f"{self.name}={self.source}" if isinstance(self.source, str) else self.name

    def __repr__(self) -> str:  # the request is logged: no frames in the log
        return f"InputVideo({self.label}, {self.frames} frames of {self.size[0]}x{self.size[1]})"


def open_video(video: Any, *, name: str = "video") -> InputVideo:
    """Check ``video`` (a path or frames) and count its frames; every problem is an :class:`InputError`."""
    if isinstance(video, InputVideo):
        return video
    if isinstance(video, (str, Path)):
        return _open_file(Path(video), name)
    frames = _as_uint8(video, name)
    return InputVideo(frames, len(frames), (frames.shape[2], frames.shape[1]), frames[0], name)


def _as_uint8(video: Any, name: str) -> np.ndarray:
    array = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise InputError(f"{name} frames have shape {array.shape}; expected (F, H, W, 3), or {USAGE}")
    if len(array) == 0 or min(array.shape[1:3]) < 1:
        raise InputError(f"{name} holds no frames; {USAGE}")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InputError(f"{name} float frames must lie in [0, 1] (divide 0..255 data by 255, or pass uint8)")
        return np.round(array * 255.0).astype(np.uint8)
    raise InputError(f"{name} frames have dtype {array.dtype}; use uint8, or float in [0, 1]")


def _open_file(path: Path, name: str) -> InputVideo:
    import imageio_ffmpeg

    if path.is_dir():
        raise InputError(f"{name}={path} is a directory; {USAGE}")
    if not path.exists():
        raise InputError(f"{name}={path} does not exist; check the path")
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        width, height = meta["size"]
        first = next(reader, None)
        reader.close()
        count = imageio_ffmpeg.count_frames_and_secs(str(path))[0] if first is not None else 0
    except (OSError, RuntimeError, StopIteration, ValueError, KeyError) as err:
        if "does not contain any stream" in str(err):  # a container without a video stream (or with no frames)
            raise InputError(f"{name}={path} holds no video frames; {USAGE}") from None
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise InputError(f"{name}={path} is not a readable video ({reason}); {USAGE}") from None
    if first is None or count < 1:
        raise InputError(f"{name}={path} holds no frames; {USAGE}")
    frame = np.frombuffer(first, dtype=np.uint8).reshape(height, width, 3).copy()
    return InputVideo(str(path), int(count), (int(width), int(height)), frame, name)


class VideoReader:
    """Frames of an :class:`InputVideo` in segments that only move forward (they may overlap)."""

    def __init__(self, video: InputVideo, *, width: int, height: int) -> None:
        self.video, self.size = video, (width, height)
        self._frames = self._decode()
        self._buffer: list[np.ndarray] = []
        self._offset = 0  # the video frame buffer[0] is

    def _decode(self) -> Iterator[np.ndarray]:
        if not isinstance(self.video.source, str):
            yield from self.video.source
            return
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(self.video.source)
        width, height = next(reader)["size"]
        try:
            for raw in reader:
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
        finally:
            reader.close()

    def segment(self, start: int, count: int) -> torch.Tensor:
        """Frames ``start .. start + count - 1`` resized -> (1, 3, count, H, W) in [0, 1]; past the
        input's end its last frame repeats (a trimmed last segment)."""
        if start < self._offset:
            raise ValueError(f"segments must move forward: frame {start} was already dropped")
        skip = start - (self._offset + len(self._buffer))  # frames no segment needs, not decoded yet
        del self._buffer[: start - self._offset]
        self._offset = start
        for _ in range(max(0, skip)):
            next(self._frames, None)
        while len(self._buffer) < count:
            frame = next(self._frames, None)
            if frame is None:
                break
            self._buffer.append(self._resize(frame))
        if not self._buffer:
            raise InputError(f"{self.video.name} ended before frame {start}")
        frames = self._buffer[:count] + [self._buffer[-1]] * (count - len(self._buffer))
        return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)[None].float() / 255.0

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(frame))
        return np.asarray(image.resize(self.size, Image.Resampling.BICUBIC))
