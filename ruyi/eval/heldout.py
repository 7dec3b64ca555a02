"""Start images that training never saw, by kind, each the centre of a larger canvas whose true pans
(and zooms) exist.

Two disjoint sets, fixed before the training they judge (``IMAGE_SETS``):

- ``heldout`` (image seed 7): the report set. Numbers quoted for a model come from here only.
- ``selection`` (image seed 8 and other photographs): for choosing settings, checkpoints and recipes.

Four kinds of image in each (``KINDS``):

- ``drawn``: random polygons, ellipses, lines and outlines over flat, gradient or noise backgrounds
  (drawn by this module, not by the training's generators), plus the default run's sky picture
  (``ruyi.io.procedural_image``) in the held-out set;
- ``gradients``: linear, radial or four-corner colour gradients with faint structure on top (a
  little noise, soft blobs or a ripple). A pure 1-D gradient panned along its constant axis shows no
  motion at all: such an image is simply not *measurable* (see below), not a failure;
- ``textures``: procedural textures of the training generators' ``heldout`` stream (its own random
  stream, never a training texture);
- ``photographs``: scikit-image photographs of the set (``ruyi.training.data.photos.PHOTO_SETS``,
  where the split between held-out, selection and trainable photos is written down), each as a
  ``whole`` view (the photo covers the canvas) and a ``detail`` view (twice as large, a seeded crop).

An image is *measurable* when the motion measure reads all four of its own true pans right (the
benchmark measures them through the model's VAE); the goal is judged on measurable images, and the
score on all images is given beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ruyi.errors import ConfigError
from ruyi.training.data.photos import load_photo, photo_set
from ruyi.training.data.pictures import TEXTURE_KINDS, as_uint8, textured_canvas
from ruyi.conditioning.control import MOVES, PANS, ZOOMS
from ruyi.training.data.procedural import SPLITS, pan_clip, zoom_clip

KINDS = ("drawn", "gradients", "textures", "photographs")
# random streams of this module's own pictures: (image seed, held-out split, stream, index)
STREAMS = {"drawn": 0x64726177, "gradients": 0x67726164, "photographs": 0x70686F74}


@dataclass(frozen=True)
class ImageSetSpec:
    seed: int  # the procedural kinds' image seed
    photos: str  # a set of ruyi.training.data.photos.PHOTO_SETS
    default_sky: bool  # the default run's picture among the drawn images


IMAGE_SETS = {
    "heldout": ImageSetSpec(seed=7, photos="heldout", default_sky=True),
    "selection": ImageSetSpec(seed=8, photos="selection", default_sky=False),
}


@dataclass(frozen=True)
class HeldOutImage:
    """A named picture of one kind: ``canvas`` uint8 (H + 2 travel, W + 2 travel, 3)."""

    name: str
    kind: str
    canvas: np.ndarray


def _colour(rng: np.random.Generator) -> np.ndarray:
    """Any colour, greys and dark or pale ones included (the training palette keeps to saturated ones)."""
    saturation = 0.0 if rng.random() < 0.25 else rng.uniform(0.15, 1.0)
    hsv = np.array([rng.random(), saturation, rng.uniform(0.05, 1.0)])
    rgb = Image.fromarray((hsv[None, None] * 255).astype(np.uint8), "HSV").convert("RGB")
    return np.asarray(rgb, np.float32)[0, 0] / 255.0


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return x / max(width - 1, 1), y / max(height - 1, 1)


def _faint_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth grey noise (H, W) in [-1, 1] with features of about ``cell`` px."""
    grid = rng.random((max(2, int(height / cell) + 2), max(2, int(width / cell) + 2))).astype(np.float32)
    small = Image.fromarray((grid * 255).astype(np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 127.5 - 1


def drawn_picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Polygons (3-7 corners), ellipses, lines and outlines over a flat, gradient or noise
    background -> float (H, W, 3) in [0, 1]."""
    style = rng.integers(3)
    if style == 0:
        background = np.broadcast_to(_colour(rng), (height, width, 3))
    elif style == 1:
        x, y = _grid(height, width)
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip((x * np.cos(angle) + y * np.sin(angle) + 1) / 2, 0, 1)[..., None]
        background = _colour(rng) * (1 - t) + _colour(rng) * t
    else:
        t = (_faint_noise(rng, height, width, rng.uniform(16, 48))[..., None] + 1) / 2
        background = _colour(rng) * (1 - t) + _colour(rng) * t
    img = Image.fromarray(as_uint8(background))
    draw = ImageDraw.Draw(img)
    side = min(height, width)
    for _ in range(int(rng.integers(3, 21))):
        colour = tuple(int(c * 255) for c in _colour(rng))
        r = rng.uniform(0.04, 0.35) * side
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        shape = rng.integers(4)
        if shape == 0:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
            radii = r * rng.uniform(0.4, 1.0, len(angles))
            draw.polygon([(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(radii, angles)], fill=colour)
        elif shape == 1:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.3, 1.0), cx + r, cy + r * rng.uniform(0.3, 1.0)], fill=colour)
        elif shape == 2:
            t = rng.uniform(0, np.pi)
            ends = [(cx - 2 * r * np.cos(t), cy - 2 * r * np.sin(t)), (cx + 2 * r * np.cos(t), cy + 2 * r * np.sin(t))]
            draw.line(ends, fill=colour, width=int(rng.integers(1, 9)))
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
            points = [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in angles]
            draw.polygon(points, outline=colour, width=int(rng.integers(1, 5)))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(0.5)), np.float32) / 255.0


def gradient_picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear (2-4 colour stops), radial or four-corner gradient with faint structure on top
    (smooth noise, soft blobs or a ripple of a few grey levels) -> float (H, W, 3) in [0, 1]."""
    x, y = _grid(height, width)
    style = rng.integers(3)
    if style == 2:
        corners = [_colour(rng) for _ in range(4)]
        xs, ys = x[..., None], y[..., None]
        base = (corners[0] * (1 - xs) * (1 - ys) + corners[1] * xs * (1 - ys)
                + corners[2] * (1 - xs) * ys + corners[3] * xs * ys)  # fmt: skip
        t = x
    else:
        if style == 0:
            angle = rng.uniform(0, 2 * np.pi)
            t = x * np.cos(angle) + y * np.sin(angle)
        else:
            cx, cy = rng.uniform(-0.3, 1.3, 2)
            t = np.hypot(x - cx, y - cy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        stops = np.sort(np.concatenate([[0.0, 1.0], rng.random(int(rng.integers(0, 3)))]))
        colours = np.stack([_colour(rng) for _ in stops])
        base = np.stack([np.interp(t, stops, colours[:, c]) for c in range(3)], axis=-1)
    structure = rng.integers(3)
    amplitude = rng.uniform(0.03, 0.12)
    if structure == 0:
        detail = _faint_noise(rng, height, width, rng.uniform(6, 24))
    elif structure == 1:
        detail = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(3, 9))):
            bx, by, size = rng.random(), rng.random(), rng.uniform(0.03, 0.15)
            detail += rng.choice([-1.0, 1.0]) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * size**2))
    else:
        detail = np.sin(2 * np.pi * t * rng.uniform(3, 12) + rng.uniform(0, 6.3))
    return np.clip(base + amplitude * detail[..., None], 0, 1).astype(np.float32)


def photo_canvas(photo: np.ndarray, side: tuple[int, int], *, zoom: float = 1.0,
                 rng: np.random.Generator | None = None) -> np.ndarray:  # fmt: skip
    """The photo scaled to cover ``zoom`` x ``side`` (height, width) and cut to ``side``: centred,
    or at a random place when ``rng`` is given -> uint8 (height, width, 3)."""
    height, width = side
    scale = zoom * max(height / photo.shape[0], width / photo.shape[1])
    size = (max(width, round(photo.shape[1] * scale)), max(height, round(photo.shape[0] * scale)))
    big = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
    if rng is None:
        top, left = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
    else:
        top, left = int(rng.integers(big.shape[0] - height + 1)), int(rng.integers(big.shape[1] - width + 1))
    return np.ascontiguousarray(big[top : top + height, left : left + width])


def image_set(
    name: str = "heldout",
    *,
    height: int = 64,
    width: int = 64,
    travel: int = 28,
    per_kind: int = 8,
    kinds: Sequence[str] = KINDS,
    views: int = 2,
) -> list[HeldOutImage]:
    """The set's pictures, kinds in ``KINDS`` order: ``per_kind`` drawn, gradient and texture
    canvases each, and every photograph of the set in ``views`` views (1: whole, 2: whole and
    detail). Canvases are (height + 2 travel, width + 2 travel): ``travel`` is the longest pan the
    reference will cut, (frames - 1) x px/frame."""
    if name not in IMAGE_SETS:
        raise ConfigError(f"image set {name!r} is not one of {', '.join(IMAGE_SETS)}")
    for kind in kinds:
        if kind not in KINDS:
            raise ConfigError(f"image kind {kind!r} is not one of {', '.join(KINDS)}")
    spec = IMAGE_SETS[name]
    big_h, big_w = height + 2 * travel, width + 2 * travel
    out: list[HeldOutImage] = []
    if "drawn" in kinds:
        if spec.default_sky:
            from ruyi.io import procedural_image

            out.append(HeldOutImage("default sky", "drawn", np.asarray(procedural_image(big_w, big_h))))
        for i in range(per_kind):
            rng = np.random.default_rng([spec.seed, SPLITS["heldout"], STREAMS["drawn"], i])
            out.append(HeldOutImage(f"drawn {i}", "drawn", as_uint8(drawn_picture(rng, big_h, big_w))))
    if "gradients" in kinds:
        for i in range(per_kind):
            rng = np.random.default_rng([spec.seed, SPLITS["heldout"], STREAMS["gradients"], i])
            out.append(HeldOutImage(f"gradient {i}", "gradients", as_uint8(gradient_picture(rng, big_h, big_w))))
    if "textures" in kinds:
        # the stream camera_following has always used: (seed, split "heldout", index), kinds in turn
        for i in range(per_kind):
            rng = np.random.default_rng([spec.seed, SPLITS["heldout"], i])
            canvas = textured_canvas(rng, big_h, big_w, TEXTURE_KINDS[i % len(TEXTURE_KINDS)])
            out.append(HeldOutImage(f"texture {i}", "textures", as_uint8(canvas)))
    if "photographs" in kinds:
        for i, photo in enumerate(photo_set(spec.photos)):
            picture = load_photo(photo)
            out.append(HeldOutImage(photo, "photographs", photo_canvas(picture, (big_h, big_w))))
            if views > 1:
                rng = np.random.default_rng([spec.seed, SPLITS["heldout"], STREAMS["photographs"], i])
                detail = photo_canvas(picture, (big_h, big_w), zoom=2.0, rng=rng)
                out.append(HeldOutImage(f"{photo} detail", "photographs", detail))
    return out


def start_image(canvas: np.ndarray, height: int, width: int) -> Image.Image:
    """The canvas's centre window: the first frame of every true pan of ``true_pans``."""
    top, left = (canvas.shape[0] - height) // 2, (canvas.shape[1] - width) // 2
    return Image.fromarray(canvas[top : top + height, left : left + width])


def true_pans(canvas: np.ndarray, *, frames: int, height: int, width: int, speed: int) -> dict[str, np.ndarray]:
    """{direction: uint8 (F, H, W, 3)}: pans at ``speed`` px/frame that all start from the centre
    window (``start_image``), cut by the training's own ``pan_clip`` from the part of the canvas
    each direction uses."""
    travel = (frames - 1) * speed
    margin_y, margin_x = (canvas.shape[0] - height) // 2, (canvas.shape[1] - width) // 2
    if min(margin_y, margin_x) < travel:
        raise ValueError(f"canvas {canvas.shape[:2]} leaves less than {travel} px around a {height}x{width} window")

    def span(step: int, margin: int, size: int) -> slice:
        # the window slides against the content; pan_clip starts it at the far end for step > 0
        if step > 0:
            return slice(margin - travel, margin + size)
        return slice(margin, margin + size + (travel if step < 0 else 0))

    pans = {}
    for direction in PANS:
        dx, dy = MOVES[direction].dx, MOVES[direction].dy
        part = canvas[span(dy, margin_y, height), span(dx, margin_x, width)]
        pans[direction] = pan_clip(part, frames=frames, height=height, width=width, direction=direction, speed=speed)
    return pans


def true_zooms(canvas: np.ndarray, *, frames: int, height: int, width: int, rate: float) -> dict[str, np.ndarray]:
    """{zoom_in | zoom_out: uint8 (F, H, W, 3)}: zooms at ``rate`` (log-scale a frame) about the
    centre window (``start_image``, their first frame), made by the training's own ``zoom_clip``."""
    return {move: zoom_clip(canvas, frames=frames, height=height, width=width, direction=move, rate=rate) for move in ZOOMS}
