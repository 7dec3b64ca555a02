"""Global content motion between frames, and the camera move it means (film convention).

The displacement between consecutive frames is the peak of a half-whitened phase correlation
(grey frames, lightly blurred, Hann window, cross-power spectrum divided by the square root of its
magnitude, sub-pixel peak). Classic phase correlation (full whitening) weighs every frequency
alike, so on small generated frames the codec's static 8 px block grid pins its peak at zero;
plain cross-correlation lets the window drag the peak toward zero. Measured at 64x64 x 8 frames
(35 videos of the trained tiny model, 32 true pans through the codec): whitening 1 judged 15/35 and
28/32 right, 0 judged 31/35 and 28/32, 0.5 judged 32/35 and 32/32. It reads about 30 % short of
the true travel, so magnitudes rank videos but are not exact speeds.

Film convention: ``camera=left`` moves the camera left, so the content moves right (+x);
``camera=up`` moves the content down (+y).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

WHITENING = 0.5
MAX_SIDE = 256  # larger frames are box-downscaled first: the global shift needs no more detail
# expected sign of the content's (dx, dy) for each moving camera
CONTENT = {"left": (1, 0), "right": (-1, 0), "up": (0, 1), "down": (0, -1)}


def _grey(frame: np.ndarray, blur: float, factor: int) -> np.ndarray:
    image = Image.fromarray(frame).convert("L")
    if factor > 1:
        image = image.reduce(factor)
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(image, np.float64)


def phase_shift(a: np.ndarray, b: np.ndarray, *, whitening: float = WHITENING) -> tuple[float, float]:
    """(dx, dy) such that b(x, y) ~ a(x - dx, y - dy): how far the content moved from grey ``a`` to ``b``."""
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.rfft2((a - a.mean()) * window), np.fft.rfft2((b - b.mean()) * window)
    cross = fb * np.conj(fa)
    if whitening:
        cross = cross / np.maximum(np.abs(cross), 1e-12) ** whitening
    surface = np.fft.irfft2(cross, s=a.shape)
    py, px = np.unravel_index(int(np.argmax(surface)), surface.shape)

    def refine(c_minus: float, c: float, c_plus: float) -> float:
        denom = c_minus - 2 * c + c_plus
        return 0.0 if abs(denom) < 1e-12 else 0.5 * (c_minus - c_plus) / denom

    h, w = surface.shape
    dy = py + refine(surface[(py - 1) % h, px], surface[py, px], surface[(py + 1) % h, px])
    dx = px + refine(surface[py, (px - 1) % w], surface[py, px], surface[py, (px + 1) % w])
    return (dx - w if dx > w / 2 else dx), (dy - h if dy > h / 2 else dy)


def pair_shifts(frames: np.ndarray, *, blur: float = 3.0, whitening: float = WHITENING) -> np.ndarray:
    """uint8 frames (F, H, W, 3) -> (F-1, 2) content shifts (dx, dy) in full-resolution pixels."""
    if len(frames) < 2:
        return np.zeros((0, 2))
    factor = max(1, -(-max(frames.shape[1:3]) // MAX_SIDE))
    grey = [_grey(f, blur / factor if factor > 1 else blur, factor) for f in frames]
    shifts = [phase_shift(a, b, whitening=whitening) for a, b in zip(grey, grey[1:])]
    return np.asarray(shifts, np.float64) * factor


def content_motion(frames: np.ndarray, blur: float = 3.0, *, whitening: float = WHITENING) -> tuple[float, float]:
    """uint8 frames (F, H, W, 3) -> total (dx, dy) of the content over the clip, in pixels."""
    total = pair_shifts(frames, blur=blur, whitening=whitening).sum(axis=0) if len(frames) > 1 else (0.0, 0.0)
    return float(total[0]), float(total[1])


def static_threshold(height: int, width: int) -> float:
    """px/frame below which the video counts as static: half a pixel, or 0.5 % of the shorter side
    on larger videos (a 512 px video drifting 2 px a frame is no camera move)."""
    return max(0.5, 0.005 * min(height, width))


def camera_of(dx: float, dy: float, frames: int, *, threshold: float) -> str:
    """The camera move that a total content motion (dx, dy) over ``frames`` frames means."""
    per_frame = float(np.hypot(dx, dy)) / max(frames - 1, 1)
    if per_frame < threshold:
        return "static"
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "up" if dy > 0 else "down"


def follows(direction: str, motion: tuple[float, float]) -> bool:
    """Whether a total content motion goes the way ``camera=direction`` asks (dominant axis and
    sign), whatever its size: the moving-direction score of a set of videos."""
    dx, dy = motion
    want_x, want_y = CONTENT[direction]
    if want_x:
        return abs(dx) > abs(dy) and np.sign(dx) == want_x
    return abs(dy) > abs(dx) and np.sign(dy) == want_y


def shift_compensated_difference(a: np.ndarray, b: np.ndarray, dx: float, dy: float) -> float:
    """Mean absolute grey difference of ``b`` against ``a`` moved by the rounded (dx, dy), over
    the part both frames see (0..255)."""
    sx, sy = int(round(dx)), int(round(dy))
    h, w = a.shape[:2]
    if abs(sx) >= w or abs(sy) >= h:
        return float("nan")
    # b(y, x) ~ a(y - sy, x - sx)
    a_part = a[max(0, -sy) : h - max(0, sy), max(0, -sx) : w - max(0, sx)]
    b_part = b[max(0, sy) : h - max(0, -sy), max(0, sx) : w - max(0, -sx)]
    return float(np.abs(a_part - b_part).mean())
