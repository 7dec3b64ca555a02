"""Metrics of long videos and keyframes: the camera in every segment, jumps at the seams, and how
well the video shows each keyframe's image at its frame.

A long video's segments are laid out as the pipeline lays them out
(``ruyi.conditioning.keyframes.plan_segments``), from the sample's ``segment_frames`` and
``overlap``. A *seam* is a pair of frames where the video continues
(``ruyi.conditioning.keyframes.seam_pairs``): where one segment's kept frames end and the next one's
begin (before the overlap when the video keeps the next segment's copies of the overlapping frames,
after it when it keeps the previous one's), and where a segment's copies of the frames it continued
from meet its first new frame, where the video keeps both. Its jump is measured twice, each against
the median of every other consecutive pair:

- ``seam_jump``: the global content motion (phase correlation, px) at the worst seam;
- ``seam_change``: the mean grey change (0..255, motion not compensated) at the worst seam.

1 means the seam moves like the rest of the video; the goal of a continuation is at most 2. The
median is floored at the static threshold (``ruyi.eval.motion.static_threshold``), so the jitter
of a still video is no reason to call a seam a jump.
"""

from __future__ import annotations

import numpy as np

from ruyi.conditioning.keyframes import plan_segments, seam_pairs
from ruyi.eval.frames import EvalSample
from ruyi.eval.metrics import LUMA, VideoMetric, _psnr
from ruyi.eval.motion import camera_of, static_threshold, zoom_spread
from ruyi.registry import METRICS


def segment_plan(sample: EvalSample):
    return plan_segments(len(sample.frames), segment_frames=sample.segment_frames, overlap=sample.overlap)


def segment_spans(plan) -> list[tuple[int, int]]:
    """(first, end) output frames each segment of ``plan`` made new (its camera's), in order."""
    return [(s.start + s.known, s.start + s.known + s.keep) for s in plan]


@METRICS.register("segments")
class SegmentConsistency(VideoMetric):
    """Per segment: the camera its own frames show (and whether it is the one asked for that
    segment); at the seams: the jump against the rest of the video."""

    keys = ("segments", "segment_cameras", "segment_camera_correct", "seam_jump", "seam_change")

    def skipped(self, sample):
        if sample.segment_frames is None:
            return "no segment_frames given (--segment-frames)"
        return None

    def __call__(self, sample):
        plan = segment_plan(sample)
        spans = segment_spans(plan)
        height, width = sample.frames.shape[1:3]
        shifts = sample.pair_shifts  # pair i: frame i -> i + 1
        threshold = static_threshold(height, width)
        cameras = [self.camera(sample, a, b, threshold) if b - a > 1 else None for a, b in spans]
        asked = sample.cameras or ((sample.camera,) * len(spans) if sample.camera else None)
        judged = [c == a for c, a in zip(cameras, asked or ()) if a not in (None, "auto") and c is not None]
        seams = seam_pairs(plan, sample.overlap_frames)
        return {
            "segments": len(spans),
            "segment_cameras": cameras,
            "segment_camera_correct": float(np.mean(judged)) if judged else None,
            "seam_jump": _seam_ratio(np.hypot(shifts[:, 0], shifts[:, 1]), seams, threshold),
            "seam_change": _seam_ratio(_grey_changes(sample.frames), seams, 1.0),
        }


    @staticmethod
    def camera(sample: EvalSample, first: int, end: int, threshold: float) -> str:
        """The camera move frames ``first .. end - 1`` show (a pan or a zoom, as the camera metric judges)."""
        dx, dy = sample.pair_shifts[first : end - 1].sum(axis=0)
        height, width = sample.frames.shape[1:3]
        zoom = float(sample.pair_zooms[first : end - 1].sum())
        return camera_of(dx, dy, end - first, threshold=threshold, spread=zoom_spread(zoom, height, width), zoom=zoom)


def _grey_changes(frames: np.ndarray) -> np.ndarray:
    grey = frames.astype(np.float32) @ LUMA.numpy()
    return np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))


def _seam_ratio(values: np.ndarray, seams: list[int], floor: float) -> float | None:
    """The largest value at a seam pair over the median of the other pairs (at least ``floor``)."""
    rest = np.delete(values, seams)
    if not seams or len(rest) == 0:
        return None
    return float(max(values[i] for i in seams) / max(float(np.median(rest)), floor))


@METRICS.register("keyframe_match")
class KeyframeMatch(VideoMetric):
    """PSNR (dB) of each keyframe's frame against its image (resized as the pipeline resizes it):
    the mean over the keyframes and the worst."""

    keys = ("keyframe_psnr", "keyframe_psnr_min")

    def skipped(self, sample):
        return None if sample.keyframes else "no keyframes given (--keyframe IMAGE@FRAME)"

    def __call__(self, sample):
        scores = [_psnr(sample.frames[frame], image) for frame, image in sample.keyframes]
        return {"keyframe_psnr": float(np.mean(scores)), "keyframe_psnr_min": float(min(scores))}
