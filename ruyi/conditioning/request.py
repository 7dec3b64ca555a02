"""What one call asks for, checked before any model runs: frames, size, steps, guidance, seed,
camera/motion (per segment), keyframes, an input video and its strength.

:func:`validate_request` is the one place every entry point (the pipeline, the CLI's pre-flight,
ComfyUI) checks a call; it returns a frozen :class:`GenerationRequest` with the segment plan.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ruyi.checks import check_int, check_number
from ruyi.conditioning.buckets import MAX_RESOLUTION, MIN_RESOLUTION, resolve_size
from ruyi.conditioning.control import CameraMotionControl
from ruyi.conditioning.image import load_image
from ruyi.conditioning.keyframes import (  # noqa: F401  (FRAME_MULTIPLE: re-exported)
    DEFAULT_OVERLAP_FRAMES, FRAME_MULTIPLE, MAX_SEGMENTS, Keyframe, Segment, check_overlap_frames, check_segment,
    max_video_frames, merge_keyframes, parse_keyframes, per_segment, plan_segments,
)  # fmt: skip
from ruyi.conditioning.video import InputVideo, open_video
from ruyi.errors import ConfigError, InputError

log = logging.getLogger(__name__)

MAX_FRAMES = 120  # the longest video one denoising run makes (the 7B's trained maximum)
FRAMES_ROUNDING = ("error", "down")
MAX_STEPS = 1000  # the schedulers' training timesteps: diffusers refuses more inference steps
MAX_CFG = 20.0  # the ComfyUI sampler's range; the original uses 7, larger scales only burn the video
SEED_LIMIT = 2**64  # torch generators take 64-bit seeds
# one latent patch (VAE 8x, patch 2) at least; at most twice the largest bucket side at 512
MIN_SIDE, MAX_SIDE = 16, 2048


# what a call leaves out is the 7B's recommended setting, unless the preset's ``run`` block says otherwise;
# segment_frames: the longest video one denoising run makes (longer ones continue in segments that
# overlap by ``overlap`` latent frames)
CALL_DEFAULTS = {"frames": 120, "base_resolution": 512, "video_size": None, "steps": 25, "cfg": 7.0,
                 "segment_frames": MAX_FRAMES, "overlap": 2, "overlap_frames": DEFAULT_OVERLAP_FRAMES}  # fmt: skip
STRENGTH = 0.6  # video-to-video: how far the input is noised when a call leaves it out


@dataclass(frozen=True)
class GenerationRequest:
    """Validated arguments of one call (checked before any model runs).

    ``camera``/``motion``: the first segment's; ``cameras``/``motions``: one per segment.
    ``keyframes``: sorted, in output frames; ``segments``: the plan (empty: one segment of
    ``frames`` holding ``keyframes``); ``overlap_frames``: whose copies of overlapping frames the video
    keeps (``ruyi.conditioning.keyframes``). ``video``/``strength``: video-to-video's input and how far
    it is noised.
    """

    frames: int
    height: int
    width: int
    steps: int
    guidance_scale: float
    seed: int
    camera: str
    motion: str
    keyframes: tuple[Keyframe, ...] = ()
    segments: tuple[Segment, ...] = ()
    cameras: tuple[str, ...] = ()
    motions: tuple[str, ...] = ()
    video: InputVideo | None = None
    strength: float = 1.0
    overlap_frames: str = DEFAULT_OVERLAP_FRAMES

    def plan(self) -> tuple[Segment, ...]:
        return self.segments or (Segment(0, 0, self.frames, 0, self.frames, self.keyframes),)


def validate_request(
    start_image, end_image=None, *, control: CameraMotionControl, sampler, frames, base_resolution, video_size, steps, cfg, seed,
    camera, motion, frames_rounding: str = "error", keyframes=(), video=None, strength: float = STRENGTH,
    segment_frames: int = MAX_FRAMES, overlap: int = 2, overlap_frames: str = DEFAULT_OVERLAP_FRAMES,
) -> GenerationRequest:
    """Check every argument of a call before any model runs; ``sampler`` may be a class or instance.

    Numbers may be Python or numpy scalars; they must be finite and in range (``cfg=inf`` or a
    NaN would otherwise give a video of noise and exit 0). Images are decoded completely here, and
    an input video is counted, so a damaged file fails before the weights load. ``frames=None``
    with a ``video``: the input's frame count (rounded down to a multiple of 8).
    """
    segment_frames, overlap = check_segment(segment_frames, overlap)
    overlap_frames = check_overlap_frames(overlap_frames)
    if segment_frames > MAX_FRAMES:
        raise ConfigError(f"segment.frames={segment_frames} is above {MAX_FRAMES}, the most one denoising run takes")
    longest = max_video_frames(segment_frames, overlap)
    strength = check_number("strength", strength, low=0, low_open=True, high=1,
                            hint="video-to-video: 1 keeps only the input's first frame, lower keeps more of it")  # fmt: skip
    source = None
    if video is not None:
        source = open_video(video)
        if not sampler.starts_midway:
            raise ConfigError(f"sampler {sampler.label} cannot start from a noised input video; "
                              "use ddim, euler, euler_a or dpmpp")
        frames = input_frames(source, longest) if frames is None else frames
    frames = round_frames(frames, frames_rounding, longest=longest, segment_frames=segment_frames)
    if source is not None and frames > source.frames:
        raise InputError(f"{source.label} holds {source.frames} frames, fewer than frames={frames}; lower frames")
    least = max(1, sampler.min_steps)
    steps = check_int("steps", steps, low=least, high=MAX_STEPS,
                      hint=f"sampler {sampler.label} needs at least {least}; the original uses 25")  # fmt: skip
    cfg = check_number("cfg", cfg, low=0, high=MAX_CFG, hint="1 disables guidance; the original uses 7.0")
    if cfg > 1 and getattr(sampler, "guidance_free", False):
        raise ConfigError(f"cfg={cfg:g} with sampler {sampler.label}: it runs a step-distilled student whose guidance "
                          "is trained in (one forward per step); pass cfg=1")  # fmt: skip
    seed = check_int("seed", seed, low=0, high=SEED_LIMIT - 1, hint="below 2**64")
    base_resolution = check_int("base_resolution", base_resolution, low=MIN_RESOLUTION, high=MAX_RESOLUTION,
                                hint="512 or 768 are the trained ones")  # fmt: skip
    video_size = check_video_size(video_size)
    keys = merge_keyframes(start_image, end_image, parse_keyframes(keyframes), frames=frames)
    if not keys and source is None:
        raise InputError("a start image is required (image=path/to/start.png)")
    sizes = [image_size(key.image, name=key.name) for key in keys]
    if source is not None and not any(key.frame == 0 for key in keys) and not keyframes:
        keys = (Keyframe(source.first, 0, f"{source.name}'s first frame"), *keys)
    height, width = resolve_size(source.size if source is not None else sizes[0], base_resolution, video_size)
    segments = plan_segments(frames, segment_frames=segment_frames, overlap=overlap, keyframes=keys)
    why = f"frames={frames} in segments of {segment_frames} overlapping by {overlap} latent frame(s)"
    cameras = per_segment("camera", camera, len(segments), why)
    motions = per_segment("motion", motion, len(segments), why)
    for cam, mot in zip(cameras, motions):
        control.check_choice(cam, mot)
    return GenerationRequest(
        frames=frames, height=height, width=width, steps=steps, guidance_scale=cfg, seed=seed, camera=cameras[0],
        motion=motions[0], keyframes=keys, segments=segments, cameras=cameras, motions=motions, video=source,
        strength=strength, overlap_frames=overlap_frames,
    )  # fmt: skip


def input_frames(source: InputVideo, longest: int) -> int:
    """The output length of video-to-video without ``frames``: the input's, rounded down to a
    multiple of 8 (as ``frames_rounding=down`` does), logged when it changes."""
    count = source.frames
    if count == 1:
        return 1
    if count < FRAME_MULTIPLE:
        raise InputError(f"{source.label} holds {count} frames; video-to-video needs 1 or at least {FRAME_MULTIPLE}")
    if count > longest:
        raise InputError(f"{source.label} holds {count} frames, more than the longest video ({longest}); "
                         f"pass frames={longest} or fewer to redraw its beginning")  # fmt: skip
    rounded = count // FRAME_MULTIPLE * FRAME_MULTIPLE
    if rounded != count:
        log.warning("%s holds %d frames: the output has %d (a multiple of %d; frames= picks another count)",
                    source.label, count, rounded, FRAME_MULTIPLE)  # fmt: skip
    return rounded


def check_frames(frames: int, *, longest: int = MAX_FRAMES, segment_frames: int = MAX_FRAMES) -> int:
    """``frames``: 1 or a multiple of 8 up to ``longest`` (beyond ``segment_frames`` a video
    continues in segments)."""
    usage = f"1 or a multiple of {FRAME_MULTIPLE} up to {longest}"
    frames = check_int("frames", frames, hint=usage)
    if frames > longest and frames % FRAME_MULTIPLE == 0:
        raise ConfigError(
            f"frames={frames} is beyond the maximum {longest}: {MAX_SEGMENTS} segments of {segment_frames} frames, "
            "each continuing from frames the model made itself, so errors add up and longer videos were never "
            f"checked; lower frames to {longest} or fewer"
        )
    if not (frames == 1 or (frames % FRAME_MULTIPLE == 0 and 0 < frames <= longest)):
        raise ConfigError(
            f"frames={frames!r} is invalid; use {usage} "
            "(24 fps: 120 frames = 5 s), or frames_rounding=down"
        )
    return frames


def round_frames(frames: int, rounding: str = "error", *, longest: int = MAX_FRAMES, segment_frames: int = MAX_FRAMES) -> int:
    """``frames`` checked; with ``rounding="down"`` first floored to a multiple of 8 as the original
    does (its VAE encodes 8 frames at a time), with a warning."""
    if rounding not in FRAMES_ROUNDING:
        raise ConfigError(f"frames_rounding={rounding!r} is not one of {', '.join(FRAMES_ROUNDING)}")
    frames = check_int("frames", frames, hint=f"1 or a multiple of {FRAME_MULTIPLE} up to {longest}")
    if rounding == "down" and frames > FRAME_MULTIPLE and frames % FRAME_MULTIPLE:
        rounded = frames // FRAME_MULTIPLE * FRAME_MULTIPLE
        log.warning("frames=%d is not a multiple of %d: rounded down to %d (frames_rounding=down)",
                    frames, FRAME_MULTIPLE, rounded)  # fmt: skip
        frames = rounded
    return check_frames(frames, longest=longest, segment_frames=segment_frames)


def check_video_size(video_size: Sequence[int] | None) -> tuple[int, int] | None:
    """``[height, width]`` as two Python ints in [MIN_SIDE, MAX_SIDE] (multiples of 16 are checked
    with the buckets), or None."""
    if video_size is None:
        return None
    usage = f"give [height, width] as multiples of 16 between {MIN_SIDE} and {MAX_SIDE}, e.g. [384, 672]"
    if isinstance(video_size, (str, bytes)) or not isinstance(video_size, (Sequence, np.ndarray)):
        raise ConfigError(f"video_size={video_size!r} is invalid; {usage}")
    if len(video_size) != 2:
        raise ConfigError(f"video_size={list(video_size)} is invalid; {usage}")
    sides = tuple(check_int("video_size", side, low=MIN_SIDE, high=MAX_SIDE, hint=usage) for side in video_size)
    return sides  # type: ignore[return-value]



def image_size(image: Any, *, name: str = "image") -> tuple[int, int]:
    """(width, height) of a path, PIL image or array, decoding it completely (see ``load_image``)."""
    return load_image(image, name=name).size
