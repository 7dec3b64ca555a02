"""Judging videos: fidelity to a reference, camera and motion against what was asked, keyframe
fidelity and temporal stability, over decoded frames (``python -m ruyi eval``, ``eval=on`` sweeps).

    from ruyi.eval import evaluate
    evaluate("outputs/ruyi.mp4", reference="outputs/ref.mp4", camera="left")  # {"psnr": ..., ...}
"""

from __future__ import annotations

from collections.abc import Sequence

from ruyi.eval.frames import EvalSample, as_frames, make_sample, read_video
from ruyi.eval.metrics import (
    DEFAULT_METRICS, RESULT_KEYS, VideoMetric, build_metrics, motion_rank_correlation, score,
)  # fmt: skip


def evaluate(video, *, reference=None, image=None, end_image=None, camera=None, motion=None,
             metrics: Sequence[str] = DEFAULT_METRICS) -> dict:  # fmt: skip
    """Every metric of ``metrics`` on one video (a path, frames or a pipeline video): a dict with
    every key of :data:`RESULT_KEYS` (None where not asked) and ``skipped`` reasons."""
    sample = make_sample(video, reference=reference, image=image, end_image=end_image, camera=camera, motion=motion)
    return score(sample, build_metrics(metrics))


__all__ = [
    "DEFAULT_METRICS", "RESULT_KEYS", "EvalSample", "VideoMetric", "as_frames", "build_metrics", "evaluate",
    "make_sample", "motion_rank_correlation", "read_video", "score",
]  # fmt: skip
