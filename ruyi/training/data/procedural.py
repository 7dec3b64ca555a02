"""``data=procedural_pans``: camera pans made on the fly, so training needs no downloaded data.

Each sample draws a textured canvas (smooth noise, shapes or stripes, or shapes over noise) and
slides a crop window across it. Labels follow film convention: ``camera=left`` pans the camera
left, so the content moves RIGHT across the frames; ``camera=up`` tilts up, so the content moves
DOWN. ``motion`` 1-4 sets the speed; ``auto`` labels (camera or motion) hide a random choice, so
the model learns what ``auto`` means at inference too.

A sample is a pure function of (seed, split, index): ``split="heldout"`` draws from a separate
random stream, which benchmarks use as images the training never saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import Dataset

from ruyi.errors import ConfigError
from ruyi.registry import DATASETS

DIRECTIONS = ("static", "left", "right", "up", "down")
MOTIONS = ("1", "2", "3", "4")
KINDS = ("noise", "shapes", "stripes", "shapes_on_noise")
SPLITS = {"train": 0, "heldout": 1}
# (dx, dy) of the CONTENT per frame for each camera move, in units of the speed
CONTENT_STEP = {"static": (0, 0), "left": (1, 0), "right": (-1, 0), "up": (0, 1), "down": (0, -1)}


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


def pan_clip(canvas: np.ndarray, *, frames: int, height: int, width: int, direction: str, speed: int) -> np.ndarray:
    """Crop ``frames`` windows of (height, width) sliding over ``canvas`` so the content moves as
    ``direction`` says at ``speed`` px/frame -> uint8 (F, H, W, 3). The canvas must be large enough."""
    dx, dy = CONTENT_STEP[direction]
    travel = (frames - 1) * speed
    # the window moves against the content: content right (dx = 1) means the window slides left
    x0 = travel if dx > 0 else 0
    y0 = travel if dy > 0 else 0
    out = np.empty((frames, height, width, 3), np.uint8)
    pixels = (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)
    for f in range(frames):
        x, y = x0 - dx * f * speed, y0 - dy * f * speed
        out[f] = pixels[y : y + height, x : x + width]
    return out


@DATASETS.register("procedural_pans")
class ProceduralPans(Dataset):
    """``len`` = ``length`` samples; item -> {"video": uint8 (3, F, H, W), "camera": str, "motion": str,
    "key": None} (procedural samples are cheaper to redraw than to cache)."""

    def __init__(
        self,
        *,
        frames: int = 16,
        height: int = 288,
        width: int = 496,
        length: int = 100_000,
        seed: int = 0,
        split: str = "train",
        pixels_per_frame: Sequence[int] = (2, 4, 6, 8),
        auto_prob: float = 0.1,
        kinds: Sequence[str] = KINDS,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"data.split={split!r} is not one of {', '.join(SPLITS)}")
        if len(pixels_per_frame) != len(MOTIONS) or any(int(s) < 1 for s in pixels_per_frame):
            raise ConfigError(f"data.pixels_per_frame must give {len(MOTIONS)} speeds >= 1 (motion 1-4), got {list(pixels_per_frame)}")
        if height % 16 or width % 16 or frames < 1:
            raise ConfigError(f"data.height={height} and data.width={width} must be multiples of 16, frames >= 1")
        for kind in kinds:
            if kind not in KINDS:
                raise ConfigError(f"texture kind {kind!r} is not one of {', '.join(KINDS)}")
        self.frames, self.height, self.width = int(frames), int(height), int(width)
        self.length, self.seed, self.split = int(length), int(seed), split
        self.speeds = tuple(int(s) for s in pixels_per_frame)
        self.auto_prob, self.kinds = float(auto_prob), tuple(kinds)

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], index])

    def canvas(self, rng: np.random.Generator, speed: int) -> np.ndarray:
        margin = (self.frames - 1) * speed
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        return textured_canvas(rng, self.height + margin, self.width + margin, kind)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self.rng(index)
        direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        motion_id = int(rng.integers(len(MOTIONS)))
        camera = "auto" if rng.random() < self.auto_prob else direction
        motion = "auto" if rng.random() < self.auto_prob else MOTIONS[motion_id]
        speed = self.speeds[motion_id]
        canvas = self.canvas(rng, speed)
        clip = pan_clip(canvas, frames=self.frames, height=self.height, width=self.width, direction=direction, speed=speed)
        return {"video": torch.from_numpy(clip).permute(3, 0, 1, 2), "camera": camera, "motion": motion, "key": None}

    def start_image(self, index: int) -> Image.Image:
        """A held-out style still: the first frame the sample ``index`` would start from."""
        video = self[index]["video"]
        return Image.fromarray(video[:, 0].permute(1, 2, 0).numpy())
