"""The video metrics: small registered classes over decoded frames, CPU-fast, no network.

Each metric reads an :class:`~ruyi.eval.frames.EvalSample` and returns its keys; a key it cannot
compute (no reference given, LPIPS weights not on this machine) is ``None`` and the reason is in
``skipped``. ``configs/metric/<name>.yaml`` selects one by registry name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from ruyi.eval.frames import EvalSample
from ruyi.eval.motion import camera_of, shift_compensated_difference, static_threshold, zoom_spread
from ruyi.registry import METRICS

PSNR_CAP = 100.0  # identical videos: PSNR is infinite; the JSON holds this cap instead
LUMA = torch.tensor([0.299, 0.587, 0.114])  # BT.601 weights
CHUNK = 8  # frames per SSIM / LPIPS batch: bounds the memory of a 768x768x120 video


def _float_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (F, 3, H, W) in [0, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def _db(mse: float) -> float:
    """PSNR of a pooled mean squared error on 0..255 frames, capped (torchmetrics' formula: a
    scalar pair at that error gives the same value)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if mse == 0:
        return PSNR_CAP
    value = peak_signal_noise_ratio(torch.tensor([math.sqrt(mse)]), torch.tensor([0.0]), data_range=255.0)
    return min(PSNR_CAP, float(value))


class VideoMetric:
    """Base: ``keys`` it writes, what it ``needs`` of the sample; ``__call__`` -> {key: value}."""

    keys: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[str | None] = None  # "reference", "image", "camera" or None (the video alone)

    def skipped(self, sample: EvalSample) -> str | None:
        """Why this metric does not apply to ``sample`` (None: it does)."""
        if self.needs == "reference" and sample.reference is None:
            return "no reference video given"
        if self.needs == "image" and sample.start_image is None:
            return "no start image given"
        return None

    def __call__(self, sample: EvalSample) -> dict[str, float | str | bool | None]:
        raise NotImplementedError


@METRICS.register("psnr")
class PSNR(VideoMetric):
    """Peak signal-to-noise ratio against the reference video, over all frames (dB, capped at 100)."""

    keys = ("psnr",)
    needs = "reference"

    def __call__(self, sample):
        if np.array_equal(sample.frames, sample.reference):
            return {"psnr": PSNR_CAP}
        mse_sum, count = 0.0, 0
        for i in range(0, len(sample.frames), CHUNK):  # chunked: a 768x120 video as float is 850 MB
            a = sample.frames[i : i + CHUNK].astype(np.float32)
            b = sample.reference[i : i + CHUNK].astype(np.float32)
            mse_sum += float(((a - b) ** 2).sum())
            count += a.size
        return {"psnr": _db(mse_sum / count)}


@METRICS.register("ssim")
class SSIM(VideoMetric):
    """Structural similarity of the luma (BT.601 Y) against the reference video, mean over frames
    (scikit-image's SSIM with Wang et al.'s Gaussian window, sigma 1.5: the value torchmetrics
    gives to 1e-5, at a ninth of its CPU time thanks to a separable filter; luma as ffmpeg's ssim
    filter reports it, a third of the work of RGB)."""

    keys = ("ssim",)
    needs = "reference"

    def __call__(self, sample):
        from skimage.metrics import structural_similarity

        if min(sample.frames.shape[1:3]) < 7:  # the window needs 7 px at least
            return {"ssim": None}
        weights = LUMA.numpy()
        total = 0.0
        for a, b in zip(sample.frames, sample.reference):
            total += structural_similarity(a.astype(np.float32) @ weights / 255.0, b.astype(np.float32) @ weights / 255.0,
                                           data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)  # fmt: skip
        return {"ssim": total / len(sample.frames)}


@METRICS.register("lpips")
class LPIPS(VideoMetric):
    """Learned perceptual distance to the reference (torchmetrics' LPIPS), only when its backbone
    weights are already on this machine: nothing is downloaded at run time."""

    keys = ("lpips",)
    needs = "reference"

    def __init__(self, *, net: str = "alex") -> None:
        self.net = net

    def skipped(self, sample):
        reason = super().skipped(sample)
        if reason:
            return reason
        return lpips_unavailable(self.net)

    def __call__(self, sample):
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        metric = LearnedPerceptualImagePatchSimilarity(net_type=self.net, normalize=True)
        for i in range(0, len(sample.frames), CHUNK):
            metric.update(_float_frames(sample.frames[i : i + CHUNK]), _float_frames(sample.reference[i : i + CHUNK]))
        return {"lpips": float(metric.compute())}


def lpips_unavailable(net: str) -> str | None:
    """Why LPIPS cannot run here without a download (None: it can)."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("torchvision") is None:
        return "torchvision is not installed (pip install torchvision)"
    files = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if not (checkpoints / files.get(net, "?")).is_file():
        return f"the {net} backbone weights are not in {checkpoints} (no download at run time)"
    return None


@METRICS.register("camera")
class CameraMotion(VideoMetric):
    """The camera move the global content motion means (a pan or a zoom, film convention), whether
    it is the one asked for, the motion's size in px/frame and the zoom a frame (log-scale)."""

    keys = ("camera_direction", "camera_correct", "motion_px_per_frame", "motion_dx", "motion_dy", "motion_zoom")

    def __init__(self, *, static_px_per_frame: float | None = None) -> None:
        self.static_px_per_frame = static_px_per_frame  # None: static_threshold(video size)

    def __call__(self, sample):
        frames, (height, width) = len(sample.frames), sample.frames.shape[1:3]
        dx, dy = (float(v) for v in sample.pair_shifts.sum(axis=0)) if frames > 1 else (0.0, 0.0)
        zoom = float(sample.pair_zooms.sum()) if frames > 1 else 0.0
        threshold = self.static_px_per_frame or static_threshold(height, width)
        direction = camera_of(dx, dy, frames, threshold=threshold, spread=zoom_spread(zoom, height, width), zoom=zoom)
        asked = sample.camera if sample.camera not in (None, "auto") else None
        return {
            "camera_direction": direction,
            "camera_correct": None if asked is None else direction == asked,
            "motion_px_per_frame": float(np.hypot(dx, dy)) / max(frames - 1, 1),
            "motion_dx": dx / max(frames - 1, 1),
            "motion_dy": dy / max(frames - 1, 1),
            "motion_zoom": zoom / max(frames - 1, 1),
        }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return _db(float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()))


@METRICS.register("keyframes")
class KeyframeFidelity(VideoMetric):
    """The first frame against the start image and the last against the end image (PSNR, dB),
    both images resized as the pipeline resizes them."""

    keys = ("start_frame_psnr", "end_frame_psnr")
    needs = "image"

    def __call__(self, sample):
        end = None if sample.end_image is None else _psnr(sample.frames[-1], sample.end_image)
        return {"start_frame_psnr": _psnr(sample.frames[0], sample.start_image), "end_frame_psnr": end}


@METRICS.register("flicker")
class Flicker(VideoMetric):
    """Temporal instability: mean absolute grey change between consecutive frames after the
    global motion between them is compensated (0..255; 0 is perfectly steady)."""

    keys = ("flicker",)

    def __call__(self, sample):
        if len(sample.frames) < 2:
            return {"flicker": None}
        grey = [np.asarray(f, np.float32) @ LUMA.numpy() for f in sample.frames]
        diffs = [shift_compensated_difference(a, b, dx, dy) for a, b, (dx, dy) in zip(grey, grey[1:], sample.pair_shifts)]
        finite = [d for d in diffs if math.isfinite(d)]
        return {"flicker": float(np.mean(finite)) if finite else None}


DEFAULT_METRICS = ("psnr", "ssim", "lpips", "camera", "keyframes", "flicker")
# the keys every result has (null where not asked), in the table's order
RESULT_KEYS = ("psnr", "ssim", "lpips", "camera_direction", "camera_correct", "motion_px_per_frame",
               "motion_dx", "motion_dy", "motion_zoom", "start_frame_psnr", "end_frame_psnr", "flicker",
               "keyframe_psnr", "keyframe_psnr_min", "segments", "segment_cameras", "segment_camera_correct",
               "seam_jump", "seam_change")  # fmt: skip


def build_metrics(names: Sequence[str] = DEFAULT_METRICS) -> list[VideoMetric]:
    return [METRICS.get(str(name))() for name in names]


def score(sample: EvalSample, metrics: Sequence[VideoMetric] | None = None) -> dict:
    """Every result key (None where a metric was not asked or does not apply), plus ``skipped``:
    {metric: reason} for those that did not run."""
    metrics = build_metrics() if metrics is None else metrics
    result: dict = dict.fromkeys(RESULT_KEYS)
    skipped = {}
    for metric in metrics:
        reason = metric.skipped(sample)
        if reason:
            skipped[metric.registry_name] = reason
            continue
        result.update(metric(sample))
    result["skipped"] = skipped
    return result


def motion_rank_correlation(motions: Sequence, magnitudes: Sequence[float]) -> float | None:
    """Spearman rank correlation of the requested ``motion`` (1-4) with the measured px/frame over
    a set of videos ("auto" rows left out); None with fewer than two distinct levels."""
    from torchmetrics.functional import spearman_corrcoef

    pairs = [(float(m), float(v)) for m, v in zip(motions, magnitudes) if str(m) != "auto" and v is not None]
    if len({m for m, _ in pairs}) < 2:
        return None
    levels, values = (torch.tensor(c, dtype=torch.float64) for c in zip(*pairs))
    return float(spearman_corrcoef(levels, values))
