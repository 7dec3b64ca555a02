"""Videos as the metrics see them: uint8 frames ``(F, H, W, 3)``, read from anything a user has.

An mp4 (or any container ffmpeg reads), a folder of numbered images, a pipeline's float video
``(1, 3, F, H, W)`` in [0, 1] or an array of frames all become the same thing, so ``ruyi eval``
judges videos that ruyi did not make too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ruyi.conditioning.keyframes import DEFAULT_OVERLAP_FRAMES
from ruyi.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def read_video(path: str | Path, *, name: str = "video") -> np.ndarray:
    """A video file or a folder of frame images -> uint8 ``(F, H, W, 3)``; unreadable input is an
    :class:`InputError` naming it."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{name} {path} does not exist; give an mp4 or a folder of frame images")
    frames = _read_folder(path, name) if path.is_dir() else _read_file(path, name)
    if len(frames) == 0:
        raise InputError(f"{name} {path} holds no frames; give an mp4 or a folder of frame images")
    return frames


def _read_file(path: Path, name: str) -> np.ndarray:
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    except (OSError, RuntimeError, StopIteration, ValueError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise InputError(f"{name} {path} is not a readable video ({reason}); give an mp4 or a folder of frames") from None
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def _read_folder(path: Path, name: str) -> np.ndarray:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except OSError as err:
            raise InputError(f"{name} frame {file} is not a readable image ({err})") from None
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise InputError(f"{name} {path} mixes frame sizes {sorted(sizes)}; all frames must be one size")
    return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def as_frames(video, *, name: str = "video") -> np.ndarray:
    """A path, a pipeline video ``(1, 3, F, H, W)`` / ``(3, F, H, W)`` float in [0, 1], or frames
    ``(F, H, W, 3)`` (uint8, or float in [0, 1]) -> uint8 ``(F, H, W, 3)``."""
    if isinstance(video, (str, Path)):
        return read_video(video, name=name)
    if isinstance(video, torch.Tensor):
        if video.ndim == 5:
            if video.shape[0] != 1:
                raise InputError(f"{name} has a batch of {video.shape[0]}; evaluate one video at a time")
            video = video[0]
        if video.ndim != 4 or video.shape[0] != 3:
            raise InputError(f"{name} tensor has shape {tuple(video.shape)}; expected (1, 3, F, H, W)")
        video = video.permute(1, 2, 3, 0).float().cpu().numpy()
    array = np.asarray(video)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise InputError(f"{name} has shape {array.shape}; expected frames (F, H, W, 3)")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InputError(f"{name} holds NaN or inf values")
        return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise InputError(f"{name} has dtype {array.dtype}; use uint8, or float in [0, 1]")


def as_image(image, *, size: tuple[int, int], name: str) -> np.ndarray:
    """A start/end image resized as the pipeline resizes it (PIL bicubic to the video's
    ``(width, height)``; the aspect bucket is already the video's size) -> uint8 ``(H, W, 3)``."""
    from ruyi.conditioning.image import load_image

    return np.asarray(load_image(image, name=name).resize(size, Image.Resampling.BICUBIC))


@dataclass
class EvalSample:
    """One video and what it is judged against; per-pair motion is measured once and shared."""

    frames: np.ndarray  # uint8 (F, H, W, 3)
    reference: np.ndarray | None = None  # uint8, same shape
    start_image: np.ndarray | None = None  # uint8 (H, W, 3), already at the video's size
    end_image: np.ndarray | None = None
    camera: str | None = None  # the camera that was asked for
    motion: str | None = None
    keyframes: tuple = ()  # (frame, uint8 (H, W, 3) image at the video's size) the video should show
    segment_frames: int | None = None  # a long video's segment length (ruyi.conditioning.keyframes)
    overlap: int = 2  # latent frames each segment takes from the previous one
    cameras: tuple[str, ...] | None = None  # the camera asked for each segment
    overlap_frames: str = DEFAULT_OVERLAP_FRAMES  # whose copies of overlapping frames the video kept (segment.overlap_frames)

    @cached_property
    def pair_shifts(self) -> np.ndarray:
        """(F-1, 2): the content's (dx, dy) from each frame to the next, in pixels."""
        from ruyi.eval.motion import pair_shifts

        return pair_shifts(self.frames)

    @cached_property
    def pair_zooms(self) -> np.ndarray:
        """(F-1,): the content's log-scale change from each frame to the next (> 0: it grows)."""
        from ruyi.eval.motion import pair_zooms

        return pair_zooms(self.frames)


def make_sample(video, *, reference=None, image=None, end_image=None, camera=None, motion=None, keyframes=None,
                segment_frames=None, overlap=2, overlap_frames=DEFAULT_OVERLAP_FRAMES) -> EvalSample:  # fmt: skip
    """Read and check everything one evaluation needs (one line per bad input). ``camera``: one
    camera, or one per segment (a list, or text with commas) with ``segment_frames``."""
    from ruyi.conditioning.control import AUTO, MOTIONS, MOVES

    frames = as_frames(video, name="video")
    ref = None
    if reference is not None:
        ref = as_frames(reference, name="reference")
        if ref.shape != frames.shape:
            raise InputError(
                f"reference has {ref.shape[0]} frames of {ref.shape[2]}x{ref.shape[1]}, the video "
                f"{frames.shape[0]} of {frames.shape[2]}x{frames.shape[1]}; compare videos of the same request"
            )
    size = (frames.shape[2], frames.shape[1])
    start = None if image is None else as_image(image, size=size, name="image")
    end = None if end_image is None else as_image(end_image, size=size, name="end_image")
    keys = _keyframes(keyframes, len(frames), size)
    segments, cameras = None, None
    if segment_frames is not None:
        segments, overlap_frames = _segments(segment_frames, overlap, overlap_frames, len(frames))
    if isinstance(camera, str) and "," in camera:
        camera = [c.strip() for c in camera.split(",")]
    for c in camera if isinstance(camera, (list, tuple)) else [] if camera is None else [camera]:
        if str(c) not in (*MOVES, AUTO):  # every move the camera metric can tell apart
            raise InputError(f"camera={c!r} is not one of {', '.join((*MOVES, AUTO))}")
    if isinstance(camera, (list, tuple)):
        if segments is None or len(camera) != segments:
            count = "no --segment-frames" if segments is None else f"{segments} segments"
            raise InputError(f"{len(camera)} cameras given for a video of {count}; give one camera, or one per segment")
        cameras, camera = tuple(str(c) for c in camera), (str(camera[0]) if len(set(camera)) == 1 else None)
    elif camera is not None:
        camera = str(camera)
    if motion is not None:
        if str(motion) not in MOTIONS:
            raise InputError(f"motion={motion!r} is not one of {', '.join(MOTIONS)}")
        motion = str(motion)
    return EvalSample(frames, ref, start, end, camera, motion, keys, segment_frames, overlap, cameras, overlap_frames)


def _keyframes(keyframes, frames: int, size: tuple[int, int]) -> tuple:
    """``[(image, frame) | {image:, frame:}]`` -> ((frame, uint8 image at ``size``), ...), each inside the video."""
    if not keyframes:
        return ()
    from ruyi.conditioning.keyframes import parse_keyframes

    found = []
    for key in parse_keyframes(keyframes):
        if key.frame >= frames:
            raise InputError(f"{key.name} is at frame {key.frame}, outside the video's {frames} frames (0..{frames - 1})")
        found.append((key.frame, as_image(key.image, size=size, name=key.name)))
    return tuple(found)


def _segments(segment_frames, overlap, overlap_frames, frames: int) -> tuple[int, str]:
    """The segment count of a ``frames``-frame video, and ``overlap_frames`` checked."""
    from ruyi.conditioning.keyframes import check_overlap_frames, check_segment, plan_segments
    from ruyi.errors import RuyiUserError

    try:
        segment_frames, overlap = check_segment(segment_frames, overlap)
        overlap_frames = check_overlap_frames(overlap_frames)
    except RuyiUserError as err:
        raise InputError(str(err)) from None
    return len(plan_segments(frames, segment_frames=segment_frames, overlap=overlap)), overlap_frames
