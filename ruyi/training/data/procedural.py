"""``data=procedural_pans``: camera pans and zooms made on the fly, so training needs no downloaded data.

Each sample crops a window sliding across a picture (``data.kinds``, drawn by
``ruyi.training.data.pictures``: smooth noise, shapes, stripes and shapes over noise by default;
drawn polygons, faint gradients, fractal noise, blends and crops of the trainable photographs on
request). ``data.cameras`` are the moves drawn (the pans by default; ``zoom_in`` and ``zoom_out``
on request; what each does is ``ruyi.conditioning.control.MOVES``). Labels follow film convention:
``camera=left`` pans the camera left, so the content moves RIGHT across the frames; ``camera=up``
tilts up, so the content moves DOWN; ``camera=zoom_in`` enlarges the content about the frame's
centre. ``motion`` 1-4 sets the speed (``pixels_per_frame``, ``zoom_per_frame``); ``auto`` labels
(camera or motion) hide a random choice, so the model learns what ``auto`` means at inference too.

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

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ruyi.conditioning.control import MOTIONS, MOVES, PANS
from ruyi.errors import ConfigError
from ruyi.models.transformer.inputs import VAE_TEMPORAL
from ruyi.registry import DATASETS
from ruyi.training.data.pictures import KINDS, TEXTURE_KINDS, as_uint8, photo_sources, textured_canvas, vary_tone

SPEEDS = MOTIONS[:-1]  # the motion labels with a speed (1-4); auto hides one of them
SPLITS = {"train": 0, "heldout": 1}


def pan_clip(canvas: np.ndarray, *, frames: int, height: int, width: int, direction: str, speed: int) -> np.ndarray:
    """Crop ``frames`` windows of (height, width) sliding over ``canvas`` (float in [0, 1] or uint8)
    so the content moves as ``direction`` says at ``speed`` px/frame -> uint8 (F, H, W, 3). The canvas
    must exceed (height, width) by ``(frames - 1) * speed`` along the motion."""
    dx, dy = MOVES[direction].dx, MOVES[direction].dy
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


def zoom_extent(height: int, width: int, frames: int, rate: float) -> tuple[int, int]:
    """The canvas (height, width) a zoom of ``frames`` frames at ``rate`` needs: its widest window."""
    grow = math.exp(rate * (frames - 1))
    return math.ceil(height * grow) + 2, math.ceil(width * grow) + 2


def zoom_clip(canvas: np.ndarray, *, frames: int, height: int, width: int, direction: str, rate: float) -> np.ndarray:
    """Windows about the centre of ``canvas`` (float in [0, 1] or uint8) whose content is scaled by
    ``exp(zoom * rate * f)`` in frame f (zoom +1 for ``zoom_in``, -1 for ``zoom_out``), resampled
    to (height, width) -> uint8 (F, H, W, 3). Frame 0 is the centre window itself, exactly (the
    start image); a zoom out needs the canvas of ``zoom_extent``."""
    zoom = MOVES[direction].zoom
    if not zoom:
        raise ValueError(f"{direction!r} is not a zoom")
    need = zoom_extent(height, width, frames, rate) if zoom < 0 else (height, width)
    if canvas.shape[0] < need[0] or canvas.shape[1] < need[1]:
        raise ValueError(f"canvas {canvas.shape[:2]} is too small for a {height}x{width} zoom out to {need}")
    top, left = (canvas.shape[0] - height) // 2, (canvas.shape[1] - width) // 2
    cy, cx = top + height / 2, left + width / 2
    picture = Image.fromarray(as_uint8(canvas))
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        scale = math.exp(zoom * rate * f)
        half_w, half_h = width / scale / 2, height / scale / 2
        box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        out[f] = np.asarray(picture.resize((width, height), Image.Resampling.BICUBIC, box=box))
    return out

def turning_clip(canvas: np.ndarray, *, height: int, width: int, moves: list[tuple[str, int]]) -> np.ndarray:
    """Windows of (height, width) over ``canvas`` whose content moves ``moves[f - 1]`` = (direction,
    px) from frame f - 1 to frame f -> uint8 (len(moves) + 1, H, W, 3); the canvas must exceed the
    window by the path's extent (:func:`path_extent`)."""
    offsets = _window_path(moves)
    (low_y, low_x), (span_y, span_x) = offsets.min(axis=0), offsets.max(axis=0) - offsets.min(axis=0)
    if canvas.shape[0] < height + span_y or canvas.shape[1] < width + span_x:
        raise ValueError(f"canvas {canvas.shape[:2]} is too small for a {height}x{width} window moving {span_y}x{span_x} px")
    pixels = as_uint8(canvas)
    return np.stack([pixels[y - low_y : y - low_y + height, x - low_x : x - low_x + width] for y, x in offsets])


def _window_path(moves: list[tuple[str, int]]) -> np.ndarray:
    """(F, 2) window offsets (y, x) from frame 0; the window moves against the content."""
    offsets = [(0, 0)]
    for direction, speed in moves:
        dx, dy = MOVES[direction].dx, MOVES[direction].dy
        y, x = offsets[-1]
        offsets.append((y - dy * speed, x - dx * speed))
    return np.asarray(offsets)


def path_extent(moves: list[tuple[str, int]]) -> tuple[int, int]:
    """(rows, columns) a window path covers beyond the window itself."""
    offsets = _window_path(moves)
    span = offsets.max(axis=0) - offsets.min(axis=0)
    return int(span[0]), int(span[1])

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
    texture offers many start places; 96 at 288x496 are ~160 MB per worker at 8 px/frame, ~220 MB at 16;
    with zooms at least the widest zoom-out window + that margin).
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
        cameras: Sequence[str] = PANS,
        pixels_per_frame: Sequence[int] = (2, 4, 6, 8),
        zoom_per_frame: Sequence[float] = (0.03, 0.06, 0.09, 0.12),
        auto_prob: float = 0.1,
        kinds: Sequence[str] = TEXTURE_KINDS,
        bank_size: int = 96,
        tone_prob: float = 0.0,
        turn_prob: float = 0.0,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"data.split={split!r} is not one of {', '.join(SPLITS)}")
        if isinstance(cameras, str) or not cameras or any(c not in MOVES for c in cameras):
            raise ConfigError(f"data.cameras={list(cameras) if not isinstance(cameras, str) else cameras!r} must list "
                              f"moves this dataset draws: {', '.join(MOVES)} (repeat one to draw it more often)")  # fmt: skip
        if len(pixels_per_frame) != len(SPEEDS) or any(int(s) < 1 for s in pixels_per_frame):
            raise ConfigError(f"data.pixels_per_frame must give {len(SPEEDS)} speeds >= 1 (motion 1-4), got {list(pixels_per_frame)}")
        if len(zoom_per_frame) != len(SPEEDS) or any(not 0 < float(z) <= 0.5 for z in zoom_per_frame):
            raise ConfigError(f"data.zoom_per_frame must give {len(SPEEDS)} log-scale steps in (0, 0.5] (motion 1-4), "
                              f"got {list(zoom_per_frame)}")  # fmt: skip
        if height % 16 or width % 16 or frames < 1:
            raise ConfigError(f"data.height={height} and data.width={width} must be multiples of 16, frames >= 1")
        for kind in kinds:
            if kind not in KINDS:
                raise ConfigError(f"texture kind {kind!r} is not one of {', '.join(KINDS)}")
        if not kinds or int(bank_size) < len(kinds):
            raise ConfigError(f"data.bank_size={bank_size} must be at least the number of texture kinds ({len(kinds)})")
        if not 0.0 <= float(tone_prob) <= 1.0:
            raise ConfigError(f"data.tone_prob={tone_prob} must lie in [0, 1]")
        if not 0.0 <= float(turn_prob) <= 1.0 or (turn_prob and frames < 8):
            raise ConfigError(f"data.turn_prob={turn_prob} must lie in [0, 1] (and needs data.frames >= 8)")
        self.frames, self.height, self.width = int(frames), int(height), int(width)
        self.length, self.seed, self.split = int(length), int(seed), split
        self.cameras = tuple(str(c) for c in cameras)
        self.speeds = tuple(int(s) for s in pixels_per_frame)
        self.zoom_rates = tuple(float(z) for z in zoom_per_frame)
        self.auto_prob, self.kinds = float(auto_prob), tuple(kinds)
        self.turn_prob = float(turn_prob)
        travel, margin = (self.frames - 1) * max(self.speeds), max(self.height, self.width) // 2
        bank_h, bank_w = self.height + travel, self.width + travel
        if any(MOVES[c].zoom for c in self.cameras):
            zoom_h, zoom_w = zoom_extent(self.height, self.width, self.frames, max(self.zoom_rates))
            bank_h, bank_w = max(bank_h, zoom_h), max(bank_w, zoom_w)
        self.bank = TextureBank(
            seed=self.seed, split=SPLITS[split], height=bank_h + margin, width=bank_w + margin,
            count=int(bank_size), kinds=self.kinds, tone_prob=float(tone_prob),
        )  # fmt: skip

    def __len__(self) -> int:
        return self.length

    @property
    def camera_labels(self) -> set[str]:
        """The camera labels of this dataset's clips."""
        return {*self.cameras, *(["auto"] if self.auto_prob > 0 else [])}

    @property
    def photos(self) -> tuple[str, ...]:
        """The photographs this dataset's pictures may be cut from (``photos.PHOTO_SETS["train"]`` or none)."""
        return photo_sources(self.kinds)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], index])

    def canvas(self, rng: np.random.Generator, direction: str, speed: int) -> np.ndarray:
        """uint8 (H, W, 3) + the pan's travel along its axis (see ``region``)."""
        move = MOVES[direction]
        travel = (self.frames - 1) * speed
        return self.region(rng, self.height + abs(move.dy) * travel, self.width + abs(move.dx) * travel)

    def region(self, rng: np.random.Generator, need_h: int, need_w: int) -> np.ndarray:
        """uint8 (need_h, need_w, 3): a random bank texture, a random place on it, a random mirror
        flip (none, x, y, both) and a random order of the colour channels."""
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
        direction = self.cameras[int(rng.integers(len(self.cameras)))]
        motion_id = int(rng.integers(len(SPEEDS)))
        camera = "auto" if rng.random() < self.auto_prob else direction
        motion = "auto" if rng.random() < self.auto_prob else SPEEDS[motion_id]
        if self.turn_prob and not MOVES[direction].zoom and rng.random() < self.turn_prob:
            return self.turning(rng, direction, self.speeds[motion_id], camera, motion)
        size = dict(frames=self.frames, height=self.height, width=self.width, direction=direction)
        if MOVES[direction].zoom:
            rate = self.zoom_rates[motion_id]
            clip = zoom_clip(self.region(rng, *zoom_extent(self.height, self.width, self.frames, rate)), rate=rate, **size)
        else:
            speed = self.speeds[motion_id]
            clip = pan_clip(self.canvas(rng, direction, speed), speed=speed, **size)
        return {"video": torch.from_numpy(clip).permute(3, 0, 1, 2), "camera": camera, "motion": motion, "key": None}

    def turning(self, rng: np.random.Generator, direction: str, speed: int, camera: str, motion: str) -> dict:
        """A clip whose first 4k frames (k whole latent frames) pan another way, at another speed:
        what a continued segment with a new camera starts from. "known_prefix" (4k) says those
        frames condition the sample (``ConditionedClips``), so the label speaks for the rest."""
        head = VAE_TEMPORAL * int(rng.integers(1, self.frames // VAE_TEMPORAL))
        pans = [c for c in self.cameras if not MOVES[c].zoom]
        before = pans[int(rng.integers(len(pans)))]
        before_speed = self.speeds[int(rng.integers(len(self.speeds)))]
        moves = [(before, before_speed)] * (head - 1) + [(direction, speed)] * (self.frames - head)
        rows, columns = path_extent(moves)
        canvas = self.region(rng, self.height + rows, self.width + columns)
        clip = turning_clip(canvas, height=self.height, width=self.width, moves=moves)
        return {"video": torch.from_numpy(clip).permute(3, 0, 1, 2), "camera": camera, "motion": motion, "key": None,
                "known_prefix": head}  # fmt: skip
