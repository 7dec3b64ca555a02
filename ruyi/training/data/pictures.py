"""The pictures procedural pans slide over: ``textured_canvas(rng, height, width, kind)`` of ``KINDS``
(smooth noise, shapes, stripes, shapes over noise)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ruyi.errors import ConfigError

KINDS = ("noise", "shapes", "stripes", "shapes_on_noise")


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """n saturated-enough random colours in [0, 1]."""
    hsv = np.stack([rng.random(n), rng.uniform(0.35, 1.0, n), rng.uniform(0.3, 1.0, n)], axis=1)
    rgb = Image.fromarray((hsv[None] * 255).astype(np.uint8), "HSV").convert("RGB")
    return np.asarray(rgb, dtype=np.float32)[0] / 255.0


def smooth_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Two octaves of bicubically upsampled colour noise, (H, W, 3) in [0, 1]."""
    out = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((int(rng.integers(24, 64)), 1.0), (int(rng.integers(6, 14)), 0.35)):
        grid = rng.random((max(2, height // cell + 2), max(2, width // cell + 2), 3)).astype(np.float32)
        small = Image.fromarray((grid * 255).astype(np.uint8))
        out += weight * np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255.0
    out = (out - out.min()) / max(float(out.max() - out.min()), 1e-6)
    colours = _palette(rng, 2)
    return colours[0] * out + colours[1] * (1 - out)


def shapes(rng: np.random.Generator, height: int, width: int, background: np.ndarray | None = None) -> np.ndarray:
    """Random ellipses, rectangles and triangles over a gradient (or ``background``)."""
    if background is None:
        a, b = _palette(rng, 2)
        v = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        background = np.broadcast_to(a * (1 - v) + b * v, (height, width, 3))
    img = Image.fromarray((np.clip(background, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    area = height * width
    for _ in range(int(rng.integers(12, 40) * area / (300 * 500)) + 4):
        colour = tuple(int(c * 255) for c in _palette(rng, 1)[0])
        size = rng.uniform(0.03, 0.2) * min(height, width)
        x, y = rng.uniform(-size, width), rng.uniform(-size, height)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([x, y, x + size * rng.uniform(0.5, 2), y + size], fill=colour)
        elif kind == 1:
            draw.rectangle([x, y, x + size, y + size * rng.uniform(0.5, 2)], fill=colour)
        else:
            pts = [(x + rng.uniform(0, 2 * size), y + rng.uniform(0, 2 * size)) for _ in range(3)]
            draw.polygon(pts, fill=colour)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(0.7)), np.float32) / 255.0


def stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Coloured sinusoidal stripes at a random angle, modulated by a second, finer grating."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(24, 90)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 6.3))
    angle2, period2 = rng.uniform(0, np.pi), rng.uniform(10, 30)
    wave2 = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle2) + y * np.sin(angle2)) / period2)
    mix = (0.75 * wave + 0.25 * wave2)[..., None]
    a, b = _palette(rng, 2)
    return a * mix + b * (1 - mix)


def as_uint8(picture: np.ndarray) -> np.ndarray:
    """A picture in [0, 1] (values outside are clipped) -> uint8; uint8 passes through."""
    return picture if picture.dtype == np.uint8 else (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)


def textured_canvas(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """A procedural picture (H, W, 3) float in [0, 1] of one of ``KINDS``."""
    if kind == "noise":
        return smooth_noise(rng, height, width)
    if kind == "shapes":
        return shapes(rng, height, width)
    if kind == "stripes":
        return stripes(rng, height, width)
    if kind == "shapes_on_noise":
        return shapes(rng, height, width, background=smooth_noise(rng, height, width))
    raise ConfigError(f"texture kind {kind!r} is not one of {', '.join(KINDS)}")
