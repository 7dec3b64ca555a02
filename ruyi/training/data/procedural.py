"""``data=procedural_pans``: camera pans made on the fly, so training needs no downloaded data.

Each sample crops a window sliding across a picture (``data.kinds``, drawn by
``ruyi.training.data.pictures``: smooth noise, shapes, stripes and shapes over noise by default;
drawn polygons, faint gradients, fractal noise, blends and crops of the trainable photographs on
request). Labels follow film convention: ``camera=left`` pans the camera left, so the content moves
RIGHT across the frames; ``camera=up`` tilts up, so the content moves DOWN.
``motion`` 1-4 sets the speed (``pixels_per_frame``); ``auto`` labels (camera or motion) hide a
random choice, so the model learns what ``auto`` means at inference too.

Drawing a texture costs tens of milliseconds (PIL), cutting a clip out of one about a millisecond:
the canvases come from a :class:`TextureBank` of ``bank_size`` large textures per split, drawn once
(in each DataLoader worker, at its first sample) and reused. A sample picks a texture, a
random place on it, a mirror flip and an order of the colour channels, and slides its window there.
``tone_prob`` gives that share of the bank a random contrast, brightness and sometimes grey
(``pictures.vary_tone``).

A sample is a pure function of (seed, split, index) and the options: the bank depends on (seed,
split) and the sizes alone, so neither the worker count nor the order of the samples changes
anything. ``split="heldout"`` has its own bank and sample stream: images the training never saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ruyi.errors import ConfigError
from ruyi.registry import DATASETS
from ruyi.training.data.pictures import KINDS, TEXTURE_KINDS, as_uint8, photo_sources, textured_canvas, vary_tone

DIRECTIONS = ("static", "left", "right", "up", "down")
MOTIONS = ("1", "2", "3", "4")
SPLITS = {"train": 0, "heldout": 1}
# (dx, dy) of the CONTENT per frame for each camera move, in units of the speed
CONTENT_STEP = {"static": (0, 0), "left": (1, 0), "right": (-1, 0), "up": (0, 1), "down": (0, -1)}


def pan_clip(canvas: np.ndarray, *, frames: int, height: int, width: int, direction: str, speed: int) -> np.ndarray:
    """Crop ``frames`` windows of (height, width) sliding over ``canvas`` (float in [0, 1] or uint8)
    so the content moves as ``direction`` says at ``speed`` px/frame -> uint8 (F, H, W, 3). The canvas
    must exceed (height, width) by ``(frames - 1) * speed`` along the motion."""
    dx, dy = CONTENT_STEP[direction]
    travel = (frames - 1) * speed
    if canvas.shape[0] < height + abs(dy) * travel or canvas.shape[1] < width + abs(dx) * travel:
        raise ValueError(f"canvas {canvas.shape[:2]} is too small for a {height}x{width} window moving {travel} px")
    # the window moves against the content: content right (dx = 1) means the window slides left
    x0 = travel if dx > 0 else 0
    y0 = travel if dy > 0 else 0
    pixels = as_uint8(canvas)
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        x, y = x0 - dx * f * speed, y0 - dy * f * speed
        out[f] = pixels[y : y + height, x : x + width]
    return out


BANK_STREAM = 0x62616E6B  # keeps the bank's random streams apart from the samples' (seed, split, index)


class TextureBank:
    """``count`` uint8 textures (height, width, 3) of one (seed, split), drawn on first use and kept.

    Texture ``k`` is of kind ``kinds[k % len(kinds)]``, drawn from its own stream (seed, split,
    BANK_STREAM, k): the same in every process, whatever order the samples come in.
    """

    def __init__(self, *, seed: int, split: int, height: int, width: int, count: int, kinds: Sequence[str],
                 tone_prob: float = 0.0) -> None:  # fmt: skip
        self.seed, self.split, self.height, self.width = seed, split, height, width
        self.count, self.kinds, self.tone_prob = count, tuple(kinds), float(tone_prob)
        self._textures: dict[int, np.ndarray] = {}

    def texture(self, k: int) -> np.ndarray:
        """Texture ``k``; the first call draws the whole bank, so a training run's speed is steady from
        its first steps on (``steps_for_time`` measures it early)."""
        if not self._textures:
            for j in range(self.count):
                rng = np.random.default_rng([self.seed, self.split, BANK_STREAM, j])
                canvas = textured_canvas(rng, self.height, self.width, self.kinds[j % len(self.kinds)])
                if self.tone_prob and rng.random() < self.tone_prob:  # no draw at 0: the first recipe's bank stays
                    canvas = vary_tone(rng, canvas)
                self._textures[j] = as_uint8(canvas)
        return self._textures[k]

    def __getstate__(self) -> dict:
        # DataLoader workers draw their own textures instead of receiving a pickled copy of the cache
        return {**self.__dict__, "_textures": {}}


@DATASETS.register("procedural_pans")
class ProceduralPans(Dataset):
    """``len`` = ``length`` samples; item -> {"video": uint8 (3, F, H, W), "camera": str, "motion": str,
    "key": None} (procedural samples are cheaper to redraw than to cache).

    ``bank_size`` textures per split (each of (H, W) + the longest pan + half the longer side, so a
    texture offers many start places; 96 at 288x496 are ~160 MB per worker at 8 px/frame, ~220 MB at 16).
    """

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
        kinds: Sequence[str] = TEXTURE_KINDS,
        bank_size: int = 96,
        tone_prob: float = 0.0,
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
        if not kinds or int(bank_size) < len(kinds):
            raise ConfigError(f"data.bank_size={bank_size} must be at least the number of texture kinds ({len(kinds)})")
        if not 0.0 <= float(tone_prob) <= 1.0:
            raise ConfigError(f"data.tone_prob={tone_prob} must lie in [0, 1]")
        self.frames, self.height, self.width = int(frames), int(height), int(width)
        self.length, self.seed, self.split = int(length), int(seed), split
        self.speeds = tuple(int(s) for s in pixels_per_frame)
        self.auto_prob, self.kinds = float(auto_prob), tuple(kinds)
        travel, margin = (self.frames - 1) * max(self.speeds), max(self.height, self.width) // 2
        self.bank = TextureBank(
            seed=self.seed, split=SPLITS[split], height=self.height + travel + margin,
            width=self.width + travel + margin, count=int(bank_size), kinds=self.kinds, tone_prob=float(tone_prob),
        )  # fmt: skip

    def __len__(self) -> int:
        return self.length

    @property
    def photos(self) -> tuple[str, ...]:
        """The photographs this dataset's pictures may be cut from (``photos.PHOTO_SETS["train"]`` or none)."""
        return photo_sources(self.kinds)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], index])

    def canvas(self, rng: np.random.Generator, direction: str, speed: int) -> np.ndarray:
        """uint8 (H, W, 3) + the pan's travel along its axis: a random bank texture, a random place
        on it, a random mirror flip (none, x, y, both) and a random order of the colour channels."""
        dx, dy = CONTENT_STEP[direction]
        travel = (self.frames - 1) * speed
        need_h, need_w = self.height + abs(dy) * travel, self.width + abs(dx) * travel
        texture = self.bank.texture(int(rng.integers(self.bank.count)))
        y = int(rng.integers(texture.shape[0] - need_h + 1))
        x = int(rng.integers(texture.shape[1] - need_w + 1))
        flip, order = int(rng.integers(4)), rng.permutation(3)
        # one gather makes the region contiguous with its columns mirrored and colours reordered
        # (a copy through a negative-stride view is ~20x slower)
        columns = np.arange(x, x + need_w)[::-1] if flip & 1 else np.arange(x, x + need_w)
        rows = texture.reshape(texture.shape[0], -1)[y : y + need_h]
        region = rows[::-1] if flip & 2 else rows
        return np.take(region, (columns[:, None] * 3 + order[None]).ravel(), axis=1).reshape(need_h, need_w, 3)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self.rng(index)
        direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
        motion_id = int(rng.integers(len(MOTIONS)))
        camera = "auto" if rng.random() < self.auto_prob else direction
        motion = "auto" if rng.random() < self.auto_prob else MOTIONS[motion_id]
        speed = self.speeds[motion_id]
        canvas = self.canvas(rng, direction, speed)
        clip = pan_clip(canvas, frames=self.frames, height=self.height, width=self.width, direction=direction, speed=speed)
        return {"video": torch.from_numpy(clip).permute(3, 0, 1, 2), "camera": camera, "motion": motion, "key": None}
