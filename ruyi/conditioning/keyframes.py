"""Keyframes anywhere in the video, and the segments a long video is made of.

A keyframe is an image the video must show at one frame (0-based, in the output video). ``image=``
and ``end_image=`` are the shorthand for keyframes at the first and the last frame. The pixel-space
layout of any set of keyframes (video + mask) is ``ruyi.conditioning.image.frames_from_keyframes``.

A video longer than one segment (``segment_frames``, the preset's maximum) is made of segments
that overlap by ``overlap`` latent frames: each later segment starts with the last
``overlap x 4`` frames of the previous one as known frames (keyframes at its start), so the model
continues the motion across the seam; the output keeps each frame once. :func:`plan_segments` lays
the segments out and gives every user keyframe to the first segment that makes its frame.

The overlapping frames exist twice: as the earlier segment made them and as the later one redrew
them around its known frames. ``overlap_frames="previous"`` (the default) keeps the earlier
segment's, so the video continues where the later segment's first new frame meets them;
``"next"`` keeps the later segment's copies, so one seam falls before the overlap, where the two
segments meet, and the last segment's copies meet its own new frames further on. ``next`` looked
better on the selection images and was worse on the held-out ones (``benchmarks/keyframes.py``,
RESULTS.md, ninth session), so it is not the default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruyi.checks import check_int, plain
from ruyi.errors import ConfigError, InputError

FRAME_MULTIPLE = 8  # the VAE encodes 8 frames (2 latent frames) at a time
LATENT_FRAME = 4  # video frames per latent frame (the VAE's temporal compression)
MAX_SEGMENTS = 10
OVERLAP_FRAMES = ("next", "previous")  # whose frames the video keeps where two segments overlap
DEFAULT_OVERLAP_FRAMES = "previous"
KEYFRAMES_USAGE = ("give a list of {image: path.png, frame: N}, "
                   "e.g. keyframes='[{image: a.png, frame: 0}, {image: b.png, frame: 60}]'")


@dataclass(frozen=True)
class Keyframe:
    """``image`` (a path, PIL image or array, as ``load_image`` takes) shown at ``frame`` (0-based)."""

    image: Any
    frame: int
    name: str = "keyframe"  # how messages call it: "image", "end_image", "keyframes[2]"

    def __repr__(self) -> str:  # requests are logged: a path, never an array's pixels
        shown = self.image if isinstance(self.image, str) else type(self.image).__name__
        return f"Keyframe({self.name}={shown} at frame {self.frame})"


def parse_keyframes(entries: Any) -> tuple[Keyframe, ...]:
    """A user's keyframe list -> Keyframes: mappings ``{image: ..., frame: N}``, ``(image, frame)``
    pairs or :class:`Keyframe` objects. Positions are checked against the video in :func:`merge_keyframes`."""
    if entries is None:
        return ()
    if isinstance(entries, (str, bytes, Mapping)) or not isinstance(entries, Sequence):
        raise ConfigError(f"keyframes={entries!r} is not a list; {KEYFRAMES_USAGE}")
    found = []
    for i, entry in enumerate(entries):
        name = f"keyframes[{i}]"
        if isinstance(entry, Keyframe):
            image, frame = entry.image, entry.frame
        elif isinstance(entry, Mapping):
            if set(entry) != {"image", "frame"}:
                raise ConfigError(f"{name}={dict(entry)!r} must have exactly the keys image and frame; {KEYFRAMES_USAGE}")
            image, frame = entry["image"], entry["frame"]
        elif isinstance(entry, Sequence) and not isinstance(entry, (str, bytes)) and len(entry) == 2:
            image, frame = entry
        else:
            raise ConfigError(f"{name}={entry!r} is not {{image: ..., frame: N}}; {KEYFRAMES_USAGE}")
        if image is None:
            raise InputError(f"{name} has no image; {KEYFRAMES_USAGE}")
        frame = check_int(f"{name}.frame", plain(frame), low=0, hint="a frame index of the output video, 0-based")
        found.append(Keyframe(image=str(image) if isinstance(image, Path) else image, frame=frame, name=name))
    return tuple(found)


def merge_keyframes(start_image: Any, end_image: Any, keyframes: Sequence[Keyframe], *, frames: int) -> tuple[Keyframe, ...]:
    """``image`` (frame 0), ``end_image`` (the last frame) and ``keyframes``, sorted by frame; a
    position outside the video or two keyframes at one frame is an :class:`InputError`."""
    merged = list(keyframes)
    if start_image is not None:
        merged.append(Keyframe(start_image, 0, "image"))
    if end_image is not None:
        if frames == 1:
            raise InputError("end_image needs a video of more than one frame; drop it or raise frames")
        merged.append(Keyframe(end_image, frames - 1, "end_image"))
    for key in merged:
        if not 0 <= key.frame < frames:
            raise InputError(
                f"{key.name} is at frame {key.frame}, outside the video's {frames} frames (0..{frames - 1}); "
                "move it or raise frames"
            )
    by_frame: dict[int, Keyframe] = {}
    for key in merged:
        if key.frame in by_frame:
            raise InputError(
                f"{by_frame[key.frame].name} and {key.name} are both at frame {key.frame}; give one image per frame"
            )
        by_frame[key.frame] = key
    return tuple(sorted(merged, key=lambda k: k.frame))


@dataclass(frozen=True)
class Segment:
    """One denoising run of a long video.

    It covers output frames ``start`` .. ``start + frames - 1``; its first ``known`` frames are the
    previous segment's last frames (0 for the first segment); it adds ``keep`` frames to the
    output (from its frame ``known`` on; fewer than ``frames - known`` when the video ends inside
    it). ``keyframes``: the user's keyframes it makes, at positions inside the segment.
    """

    index: int
    start: int
    frames: int
    known: int
    keep: int
    keyframes: tuple[Keyframe, ...] = ()


def valid_length(frames: int) -> int:
    """The smallest frame count the VAE takes (1 or a multiple of 8) that holds ``frames``."""
    return 1 if frames <= 1 else math.ceil(frames / FRAME_MULTIPLE) * FRAME_MULTIPLE


def check_segment(segment_frames: int, overlap: int) -> tuple[int, int]:
    """``segment_frames`` (a multiple of 8, at least 8) and ``overlap`` (whole latent frames,
    1 .. one less than a segment has), as Python ints."""
    segment_frames = check_int("segment.frames", segment_frames, low=FRAME_MULTIPLE,
                               hint="frames of one segment: a multiple of 8, at most the preset's")  # fmt: skip
    if segment_frames % FRAME_MULTIPLE:
        raise ConfigError(f"segment.frames={segment_frames} must be a multiple of {FRAME_MULTIPLE}")
    latent = segment_frames // LATENT_FRAME
    hint = f"latent frames ({LATENT_FRAME} video frames each) a segment takes from the previous one"
    overlap = check_int("segment.overlap", overlap, low=1, high=latent - 1, hint=hint)
    return segment_frames, overlap


def max_video_frames(segment_frames: int, overlap: int) -> int:
    """The longest video of at most ``MAX_SEGMENTS`` segments (a multiple of 8)."""
    longest = segment_frames + (MAX_SEGMENTS - 1) * (segment_frames - overlap * LATENT_FRAME)
    return longest // FRAME_MULTIPLE * FRAME_MULTIPLE


def plan_segments(frames: int, *, segment_frames: int, overlap: int, keyframes: Sequence[Keyframe] = ()) -> tuple[Segment, ...]:
    """The segments of a ``frames``-frame video (one when it fits ``segment_frames``)."""
    if frames <= segment_frames:
        return (Segment(0, 0, frames, 0, frames, tuple(keyframes)),)
    known = overlap * LATENT_FRAME
    spans = [(0, segment_frames, 0, segment_frames)]
    made = segment_frames
    while made < frames:
        left = frames - made
        length = min(segment_frames, valid_length(known + left))
        keep = min(length - known, left)
        spans.append((made - known, length, known, keep))
        made += keep
    segments = []
    for index, (start, length, head, keep) in enumerate(spans):
        mine = tuple(
            Keyframe(k.image, k.frame - start, k.name)
            for k in keyframes
            if start + head <= k.frame < start + head + keep
        )
        segments.append(Segment(index, start, length, head, keep, mine))
    return tuple(segments)


def check_overlap_frames(value: Any) -> str:
    if value not in OVERLAP_FRAMES:
        raise ConfigError(f"segment.overlap_frames={value!r} is not one of {', '.join(OVERLAP_FRAMES)} "
                          "(whose frames a long video keeps where two segments overlap)")  # fmt: skip
    return str(value)


def kept_frames(plan: Sequence[Segment], overlap_frames: str = DEFAULT_OVERLAP_FRAMES) -> list[tuple[int, int]]:
    """Per segment, the (first, end) of its own frames (0 = its first frame) that the video keeps:
    with ``"next"`` a segment gives up its last frames to the next segment's redrawn copies of them
    and keeps its own copies of the frames it continued from; with ``"previous"`` it keeps the frames
    it made new. Either way the spans tile the video, in order, each frame once."""
    check_overlap_frames(overlap_frames)
    spans = []
    for s in plan:
        if overlap_frames == "previous":
            spans.append((s.known, s.known + s.keep))
        else:
            given_up = plan[s.index + 1].known if s.index + 1 < len(plan) else 0
            spans.append((0, s.known + s.keep - given_up))
    return spans


def seam_pairs(plan: Sequence[Segment], overlap_frames: str = DEFAULT_OVERLAP_FRAMES) -> list[int]:
    """The frame pairs (i: frame i -> i + 1, in the video) where the video continues: where one
    segment's kept frames end and the next one's begin, and, where the video keeps a segment's
    copies of the frames it continued from and its first new frame too, the pair between them (with
    ``"previous"`` the two are the same pair)."""
    spans = kept_frames(plan, overlap_frames)
    pairs = {s.start + first - 1 for s, (first, _) in zip(plan[1:], spans[1:])}
    pairs |= {s.start + s.known - 1 for s, (first, end) in zip(plan[1:], spans[1:]) if first < s.known < end}
    return sorted(pairs)


def per_segment(name: str, value: Any, count: int, why: str = "") -> tuple[str, ...]:
    """``camera`` / ``motion``: one value for every segment, or a list with one entry per segment
    (``why``: how the segment count came about, for the message)."""
    if isinstance(value, (str, bytes, int)) or not isinstance(value, Sequence):
        return (str(plain(value)),) * count
    values = tuple(str(plain(v)) for v in value)
    if len(values) != count:
        shown = "one segment" if count == 1 else f"{count} segments"
        raise ConfigError(
            f"{name} lists {len(values)} value(s) but this video has {shown}{f' ({why})' if why else ''}; "
            "give one value, or one per segment "
            f"(e.g. {name}=[{', '.join(values[:1] * count)}])"
        )
    return values
