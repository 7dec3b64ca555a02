"""Judging videos: fidelity to a reference, camera and motion against what was asked, keyframe
fidelity and temporal stability, over decoded frames (``python -m ruyi eval``, ``eval=on`` sweeps).

    from ruyi.eval import evaluate
    evaluate("outputs/ruyi.mp4", reference="outputs/ref.mp4", camera="left")  # {"psnr": ..., ...}
"""

from __future__ import annotations

from collections.abc import Sequence

from ruyi.conditioning.keyframes import DEFAULT_OVERLAP_FRAMES
from ruyi.eval.frames import EvalSample, as_frames, make_sample, read_video
from ruyi.eval.metrics import (
    DEFAULT_METRICS, RESULT_KEYS, VideoMetric, build_metrics, motion_rank_correlation, score,
)  # fmt: skip
from ruyi.eval.segments import KeyframeMatch, SegmentConsistency  # noqa: F401  (registers the metrics)


def evaluate(video, *, reference=None, image=None, end_image=None, camera=None, motion=None, keyframes=None,
             segment_frames=None, overlap=2, overlap_frames=DEFAULT_OVERLAP_FRAMES, metrics: Sequence[str] | None = None) -> dict:  # fmt: skip
    """Every metric of ``metrics`` on one video (a path, frames or a pipeline video): a dict with
    every key of :data:`RESULT_KEYS` (None where not asked) and ``skipped`` reasons. ``keyframes``
    (``[(image, frame)]``) and ``segment_frames`` add the keyframe and segment metrics to the
    default set; ``camera`` may then list one camera per segment."""
    sample = make_sample(video, reference=reference, image=image, end_image=end_image, camera=camera, motion=motion,
                         keyframes=keyframes, segment_frames=segment_frames, overlap=overlap,
                         overlap_frames=overlap_frames)  # fmt: skip
    return score(sample, build_metrics(metrics or default_metrics(sample)))


def default_metrics(sample: EvalSample) -> tuple[str, ...]:
    """The default set, plus ``keyframe_match`` / ``segments`` where the sample gives what they need."""
    extra = ("keyframe_match",) * bool(sample.keyframes) + ("segments",) * (sample.segment_frames is not None)
    return (*DEFAULT_METRICS, *extra)


__all__ = [
    "DEFAULT_METRICS", "RESULT_KEYS", "EvalSample", "VideoMetric", "as_frames", "build_metrics", "default_metrics", "evaluate",
    "make_sample", "motion_rank_correlation", "read_video", "score",
]  # fmt: skip
