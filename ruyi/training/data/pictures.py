"""The pictures procedural pans slide over: ``textured_canvas(rng, height, width, kind)``.

``TEXTURE_KINDS`` are the first recipe's (smooth noise, shapes, stripes, shapes over noise; also the
kinds of the held-out ``textures`` in ``ruyi.eval.heldout``). ``VARIED_KINDS`` were added so that
camera following holds beyond them (issue 22):

- ``polygons``: polygons, ellipses, rotated boxes, lines and outlines of any size and colour (greys,
  dark and pale ones too) over flat, gradient, noise or fractal backgrounds;
- ``soft_gradient``: linear, radial or four-corner gradients whose only structure is faint (noise,
  blobs, ripples or specks of a few grey levels): the flat pictures earlier models filled with noise;
- ``fractal``: noise with a natural 1/f^beta spectrum, coloured by a palette or per channel;
- ``blend``: two pictures of the other kinds, mixed through a soft mask or evenly;
- ``photo``: a crop of one of the photographs training may use (``photos.PHOTO_SETS["train"]``),
  at a random scale and quarter turn, its greys often mapped onto random colours.

``vary_tone`` scales a picture's contrast (down to a sixth), shifts its brightness and sometimes
makes it grey: photographs are often far less contrasted than procedural pictures.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ruyi.errors import ConfigError

TEXTURE_KINDS = ("noise", "shapes", "stripes", "shapes_on_noise")
VARIED_KINDS = ("polygons", "soft_gradient", "fractal", "blend", "photo")
KINDS = TEXTURE_KINDS + VARIED_KINDS
PHOTO_KINDS = ("photo", "blend")  # the kinds that crop photographs (a blend may mix in a photo)


def photo_sources(kinds) -> tuple[str, ...]:
    """The photographs pictures of ``kinds`` may be cut from: the trainable set, or none."""
    from ruyi.training.data.photos import photo_set

    return photo_set("train") if any(k in PHOTO_KINDS for k in kinds) else ()


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


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """n colours of any kind in [0, 1]: a fifth grey, the rest any saturation, dark to pale."""
    saturation = np.where(rng.random(n) < 0.2, 0.0, rng.uniform(0, 1, n))
    hsv = np.stack([rng.random(n), saturation, rng.uniform(0.03, 1.0, n)], axis=1)
    rgb = Image.fromarray((hsv[None] * 255).astype(np.uint8), "HSV").convert("RGB")
    return np.asarray(rgb, dtype=np.float32)[0] / 255.0


def _unit_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return x / max(height, width), y / max(height, width)


def _field(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth grey noise (H, W) in [0, 1] with features of about ``cell`` px."""
    grid = rng.random((max(2, int(height / cell) + 2), max(2, int(width / cell) + 2))).astype(np.float32)
    small = Image.fromarray((grid * 255).astype(np.uint8))
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255.0


def _colour_map(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A grey field (H, W) in [0, 1] through 2-3 random colour stops -> (H, W, 3)."""
    stops = np.sort(np.concatenate([[0.0, 1.0], rng.random(int(rng.integers(0, 2)))]))
    colours = _colours(rng, len(stops))
    return np.stack([np.interp(t, stops, colours[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def fractal(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Noise with a 1/f^beta amplitude spectrum (beta 1.3-2.6: natural images sit near 2), through
    a colour map or with weakly correlated channels -> (H, W, 3) in [0, 1]."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None]
    radius = np.maximum(np.hypot(fx, fy), 1.0 / max(height, width))
    amplitude = radius ** -rng.uniform(1.3, 2.6)

    def field() -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
        out = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        lo, hi = np.percentile(out, [1, 99])
        return np.clip((out - lo) / max(hi - lo, 1e-9), 0, 1).astype(np.float32)

    if rng.random() < 0.6:
        return _colour_map(rng, field())
    grey, mix = field(), rng.uniform(0.1, 0.5)
    return np.stack([(1 - mix) * grey + mix * field() for _ in range(3)], axis=-1)


def polygons(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Polygons (3-9 corners), ellipses, rotated boxes, lines and outlines of sizes from 3 % to 60 %
    of the shorter side, over a flat, gradient, noise or fractal background -> (H, W, 3) in [0, 1]."""
    style = rng.integers(4)
    if style == 0:
        background = np.broadcast_to(_colours(rng, 1)[0], (height, width, 3))
    elif style == 1:
        x, y = _unit_grid(height, width)
        angle = rng.uniform(0, 2 * np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
        background = _colour_map(rng, (t - t.min()) / max(float(t.max() - t.min()), 1e-6))
    elif style == 2:
        background = _colour_map(rng, _field(rng, height, width, rng.uniform(8, 64)))
    else:
        background = fractal(rng, height, width)
    img = Image.fromarray(as_uint8(background))
    draw = ImageDraw.Draw(img)
    side = min(height, width)
    for _ in range(int(rng.integers(2, 30))):
        colour = tuple(int(c * 255) for c in _colours(rng, 1)[0])
        r = side * np.exp(rng.uniform(np.log(0.015), np.log(0.3)))
        cx, cy = rng.uniform(-r, width + r), rng.uniform(-r, height + r)
        shape = rng.integers(5)
        if shape in (0, 4):  # a filled or outlined polygon: random, regular or a rotated box
            n = 4 if rng.random() < 0.3 else int(rng.integers(3, 10))
            angles = rng.uniform(0, 2 * np.pi) + (np.linspace(0, 2 * np.pi, n, endpoint=False) if rng.random() < 0.5
                                                  else np.sort(rng.uniform(0, 2 * np.pi, n)))  # fmt: skip
            radii = r * (rng.uniform(0.5, 1.0, n) if rng.random() < 0.5 else np.ones(n))
            points = [(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(radii, angles)]
            if shape == 0:
                draw.polygon(points, fill=colour)
            else:
                draw.polygon(points, outline=colour, width=int(rng.integers(1, 6)))
        elif shape == 1:
            box = [cx - r, cy - r * rng.uniform(0.2, 1.0), cx + r, cy + r * rng.uniform(0.2, 1.0)]
            if rng.random() < 0.7:
                draw.ellipse(box, fill=colour)
            else:
                draw.ellipse(box, outline=colour, width=int(rng.integers(1, 6)))
        else:
            t = rng.uniform(0, np.pi)
            ends = [(cx - 2 * r * np.cos(t), cy - 2 * r * np.sin(t)), (cx + 2 * r * np.cos(t), cy + 2 * r * np.sin(t))]
            draw.line(ends, fill=colour, width=int(rng.integers(1, 11)))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5))), np.float32) / 255.0


def soft_gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A flat, linear (2-3 stops), radial or four-corner gradient whose only structure is faint:
    noise, soft blobs, a ripple or specks, of 1-15 % of the range -> (H, W, 3) in [0, 1]."""
    x, y = _unit_grid(height, width)
    style = rng.integers(4)
    if style == 0:
        base = np.broadcast_to(_colours(rng, 1)[0], (height, width, 3)).astype(np.float32)
    elif style == 3:
        c = _colours(rng, 4)
        u, v = (x / x.max())[..., None], (y / y.max())[..., None]
        base = c[0] * (1 - u) * (1 - v) + c[1] * u * (1 - v) + c[2] * (1 - u) * v + c[3] * u * v
    else:
        if style == 1:
            angle = rng.uniform(0, 2 * np.pi)
            t = x * np.cos(angle) + y * np.sin(angle)
        else:
            centre = rng.uniform(-0.3, 1.3, 2)
            t = np.hypot(x - centre[0], y - centre[1])
        base = _colour_map(rng, (t - t.min()) / max(float(t.max() - t.min()), 1e-6))
    detail = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        what = rng.integers(4)
        if what == 0:
            part = _field(rng, height, width, rng.uniform(3, 40)) * 2 - 1
        elif what == 1:
            part = np.zeros((height, width), np.float32)
            for _ in range(int(rng.integers(2, 12))):
                bx, by, size = rng.random(), rng.random(), rng.uniform(0.02, 0.2)
                part += rng.choice([-1.0, 1.0]) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * size**2))
        elif what == 2:
            angle = rng.uniform(0, np.pi)
            part = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(2, 16) + rng.uniform(0, 6.3))
        else:
            part = (rng.random((height, width)) < rng.uniform(0.002, 0.02)).astype(np.float32)
            part = np.asarray(Image.fromarray((part * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8)),
                              np.float32) / 64.0 * rng.choice([-1.0, 1.0])  # fmt: skip
        detail += np.exp(rng.uniform(np.log(0.01), np.log(0.15))) * part
    return np.clip(base + detail[..., None], 0, 1).astype(np.float32)


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A crop of a photograph training may use, scaled so its shorter side covers 1-3x the canvas's
    longer side, turned by a random quarter, its greys mapped onto colours 7 times in 10."""
    from ruyi.training.data.photos import load_photo

    names = photo_sources(("photo",))
    picture = load_photo(names[int(rng.integers(len(names)))])
    picture = np.rot90(picture, int(rng.integers(4)))
    scale = max(height, width) * rng.uniform(1.0, 3.0) / min(picture.shape[:2])
    size = (max(width, round(picture.shape[1] * scale)), max(height, round(picture.shape[0] * scale)))
    big = np.asarray(Image.fromarray(np.ascontiguousarray(picture)).resize(size, Image.Resampling.BILINEAR))
    top, left = int(rng.integers(big.shape[0] - height + 1)), int(rng.integers(big.shape[1] - width + 1))
    crop = big[top : top + height, left : left + width].astype(np.float32) / 255.0
    grey = bool(np.ptp(crop, axis=-1).max() < 1e-6)
    if grey and rng.random() < 0.7:
        return _colour_map(rng, crop[..., 0])
    return crop


def blend(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Two pictures of the other kinds, mixed through a soft threshold of smooth noise or evenly."""
    kinds = [k for k in KINDS if k != "blend"]
    a, b = (textured_canvas(rng, height, width, kinds[int(rng.integers(len(kinds)))]) for _ in range(2))
    if rng.random() < 0.6:
        edge = rng.uniform(0.02, 0.3)
        mask = np.clip((_field(rng, height, width, rng.uniform(12, 64)) - 0.5) / edge + 0.5, 0, 1)[..., None]
    else:
        mask = np.float32(rng.uniform(0.3, 0.7))
    return (a * mask + b * (1 - mask)).astype(np.float32)


def vary_tone(rng: np.random.Generator, picture: np.ndarray) -> np.ndarray:
    """Contrast scaled by 1/6-1.2 about the mean, brightness shifted by up to a fifth, grey 15 %
    of the time -> (H, W, 3) in [0, 1]."""
    picture = np.asarray(picture, np.float32) / (255.0 if picture.dtype == np.uint8 else 1.0)
    if rng.random() < 0.15:
        picture = np.repeat(picture @ np.float32([0.299, 0.587, 0.114])[:, None], 3, axis=-1)
    mean = picture.mean()
    contrast = np.exp(rng.uniform(np.log(1 / 6), np.log(1.2)))
    shift = rng.uniform(-0.2, 0.2)
    return np.clip(mean + shift + contrast * (picture - mean), 0, 1)


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
    generators = {"polygons": polygons, "soft_gradient": soft_gradient, "fractal": fractal, "blend": blend, "photo": photo}
    if kind in generators:
        return generators[kind](rng, height, width)
    raise ConfigError(f"texture kind {kind!r} is not one of {', '.join(KINDS)}")
