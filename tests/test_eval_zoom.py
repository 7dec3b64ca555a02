"""The zoom measure (``ruyi.eval.motion.pair_zoom``) and the camera metric's zoom labels.

The oracle is the clip's own construction: synthetic zooms of held-out scikit-image photographs
cut with a known log-scale step about the centre (PIL resampling, independent of the measure's
own warp), and pans cut with a known pixel step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from ruyi.eval import evaluate
from ruyi.eval.motion import content_zoom, pair_zoom, zoom_spread
from ruyi.training.data.procedural import pan_clip

PHOTOS = ("astronaut", "coffee", "camera", "coins", "rocket")
FRAMES = 8


def photo(name: str, side: int) -> np.ndarray:
    pytest.importorskip("skimage")
    from ruyi.eval.heldout import photo_canvas
    from ruyi.training.data.photos import load_photo

    return photo_canvas(load_photo(name), (side, side))


def synthetic_zoom(canvas: np.ndarray, size: int, step: float) -> np.ndarray:
    """Frame f shows the centre of ``canvas`` with its content scaled by exp(step * f), written
    out with PIL's box resize (not the code under test)."""
    centre = canvas.shape[0] / 2
    picture = Image.fromarray(canvas)
    frames = []
    for f in range(FRAMES):
        half = size / math.exp(step * f) / 2
        box = (centre - half, centre - half, centre + half, centre + half)
        frames.append(np.asarray(picture.resize((size, size), Image.Resampling.BICUBIC, box=box)))
    return np.stack(frames)


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("step", [0.02, 0.06, -0.02, -0.06])
def test_zoom_measure_reads_the_sign_and_about_the_size_of_a_known_zoom(size, step):
    total = step * (FRAMES - 1)
    for name in PHOTOS:
        clip = synthetic_zoom(photo(name, 3 * size), size, step)
        zoom = content_zoom(clip)
        assert np.sign(zoom) == np.sign(step), (name, zoom, total)
        assert 0.6 * abs(total) <= abs(zoom) <= 1.3 * abs(total), (name, zoom, total)


@pytest.mark.parametrize("direction", ["static", "left", "right", "up", "down"])
def test_zoom_measure_is_near_zero_on_pans_and_static(direction):
    """A pan moves the content without scaling it: the zoom read is a small fraction of the
    smallest zoom above (0.14 over 8 frames)."""
    for name in PHOTOS:
        canvas = photo(name, 64 + 7 * 8)
        clip = pan_clip(canvas, frames=FRAMES, height=64, width=64, direction=direction, speed=8)
        assert abs(content_zoom(clip)) < 0.05, name


def test_pair_zoom_is_antisymmetric():
    a = np.asarray(Image.fromarray(photo("coins", 96)).convert("L"), np.float64)
    b = np.asarray(Image.fromarray(photo("coins", 96)).resize((104, 104)).crop((4, 4, 100, 100)).convert("L"), np.float64)
    forward, backward = pair_zoom(a, b), pair_zoom(b, a)
    assert forward == pytest.approx(math.log(104 / 96), abs=0.02)
    assert backward == pytest.approx(-forward, abs=0.01)


def test_zoom_spread_is_the_edge_motion_in_pixels():
    assert zoom_spread(math.log(1.5), 64, 128) == pytest.approx(16.0)
    assert zoom_spread(-math.log(2.0), 100, 100) == pytest.approx(25.0)


@pytest.mark.parametrize(("step", "label"), [(0.06, "zoom_in"), (-0.06, "zoom_out")])
def test_the_camera_metric_names_zooms_and_judges_them(step, label):
    clip = synthetic_zoom(photo("astronaut", 192), 64, step)
    result = evaluate(clip, camera=label, metrics=["camera"])
    assert result["camera_direction"] == label and result["camera_correct"] is True
    assert np.sign(result["motion_zoom"]) == np.sign(step)
    other = "zoom_out" if label == "zoom_in" else "zoom_in"
    assert evaluate(clip, camera=other, metrics=["camera"])["camera_correct"] is False
    # a pan of the same picture is still a pan, and asking for a zoom is then wrong
    pan = pan_clip(photo("astronaut", 120), frames=FRAMES, height=64, width=64, direction="left", speed=4)
    panned = evaluate(pan, camera=label, metrics=["camera"])
    assert panned["camera_direction"] == "left" and panned["camera_correct"] is False
