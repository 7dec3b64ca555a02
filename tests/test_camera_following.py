"""benchmarks/camera_following.py: the motion measurement against pans made with known offsets,
and the label-loss matrix on a random tiny checkpoint of the pans preset."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import camera_following as cf  # noqa: E402
from ruyi.training.data.pictures import textured_canvas  # noqa: E402
from ruyi.training.data.procedural import pan_clip  # noqa: E402

SPEED, FRAMES, SIZE = 5, 6, 96


def pan(direction: str, kind: str = "noise", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    travel = (FRAMES - 1) * SPEED
    canvas = textured_canvas(rng, SIZE + travel, SIZE + travel, kind)
    return pan_clip(canvas, frames=FRAMES, height=SIZE, width=SIZE, direction=direction, speed=SPEED)


@pytest.mark.parametrize("whitening", [1.0, cf.WHITENING])
@pytest.mark.parametrize("direction", ["static", "left", "right", "up", "down"])
def test_content_motion_recovers_the_pans_own_offsets(direction, whitening):
    """The clip was cut with a known step: phase correlation gives it back to the pixel, the
    half-whitened default in sign and within 40 % of the travel."""
    dx, dy = cf.content_motion(pan(direction), whitening=whitening)
    want_x, want_y = {"static": (0, 0), **cf.CONTENT}[direction]
    total = (FRAMES - 1) * SPEED
    slack = 1.5 if whitening == 1.0 else 0.4 * total
    assert dx == pytest.approx(want_x * total, abs=slack) and dy == pytest.approx(want_y * total, abs=slack)
    if direction != "static":
        assert cf.is_right(direction, (dx, dy))
        assert not cf.is_right(
            {"left": "right", "right": "left", "up": "down", "down": "up"}[direction], (dx, dy)
        )


def test_is_right_needs_the_dominant_axis():
    assert cf.is_right("left", (10.0, 3.0)) and not cf.is_right("left", (3.0, 10.0))
    assert cf.is_right("up", (-2.0, 9.0)) and not cf.is_right("down", (-2.0, 9.0))


def test_label_table_bolds_each_rows_smallest_loss():
    losses = {"static": dict(zip(cf.DIRECTIONS, [0.1, 0.3, 0.3, 0.3, 0.3])),
              "left": dict(zip(cf.DIRECTIONS, [0.5, 0.4, 0.45, 0.46, 0.47]))}  # fmt: skip
    lines = cf.label_table(losses).splitlines()
    assert lines[-2] == "| static | **0.1000** | 0.3000 | 0.3000 | 0.3000 | 0.3000 |"
    assert lines[-1] == "| left | 0.5000 | **0.4000** | 0.4500 | 0.4600 | 0.4700 |"


def test_label_loss_gives_each_true_camera_a_row_of_every_label(tmp_path):
    from ruyi.models.tiny import create_tiny_checkpoint

    preset = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "model" / "ruyi_tiny_pans.yaml"))
    path = create_tiny_checkpoint(tmp_path / "ckpt", preset)
    pipe, _ = cf.build(path, "cpu", [])
    kwargs = dict(frames=8, height=64, width=64, speeds=(2, 4, 6, 8), clips=10)
    losses = cf.label_loss(pipe, path, **kwargs)
    assert set(losses) <= set(cf.DIRECTIONS) and len(losses) >= 3
    for row in losses.values():
        assert list(row) == list(cf.DIRECTIONS) and all(np.isfinite(v) and v > 0 for v in row.values())
        # a random model still reads the label a little: the columns of one row differ
        assert max(row.values()) > min(row.values())
    assert cf.label_loss(pipe, path, **kwargs) == losses  # same clips and noise every time


def test_true_pans_start_from_the_centre_window_and_move_by_the_step():
    speed, frames, size = 5, 6, 64
    travel = (frames - 1) * speed
    canvas = (
        textured_canvas(np.random.default_rng(3), size + 2 * travel, size + 2 * travel, "noise") * 255
    ).astype(np.uint8)
    pans = cf.true_pans(canvas, frames=frames, height=size, width=size, speed=speed)
    start = np.asarray(cf.start_image(canvas, size, size))
    assert np.array_equal(start, canvas[travel : travel + size, travel : travel + size])
    for direction, clip in pans.items():
        assert clip.shape == (frames, size, size, 3) and np.array_equal(clip[0], start), direction
    # film convention: camera=left -> the content moves right, camera=up -> it moves down
    a, b = pans["left"][0], pans["left"][1]
    assert np.array_equal(b[:, speed:], a[:, :-speed])
    a, b = pans["right"][0], pans["right"][1]
    assert np.array_equal(b[:, :-speed], a[:, speed:])
    a, b = pans["up"][0], pans["up"][1]
    assert np.array_equal(b[speed:], a[:-speed])
    a, b = pans["down"][0], pans["down"][1]
    assert np.array_equal(b[:-speed], a[speed:])
    assert all(np.array_equal(f, start) for f in pans["static"])
    with pytest.raises(ValueError, match="leaves less than"):
        cf.true_pans(canvas, frames=frames, height=size, width=size, speed=speed + 1)


def test_the_goal_is_judged_on_images_whose_true_pans_the_measure_reads():
    right = {"left": (9.0, 0.0), "right": (-9.0, 0.0), "up": (0.0, 9.0), "down": (0.0, -9.0)}
    rows = []
    for image in ("a", "b"):
        for direction, motion in right.items():
            # image b: its true upward pan reads sideways (a stripe texture, say)
            read = (9.0, 1.0) if (image, direction) == ("b", "up") else motion
            rows.append(
                {
                    "source": "reference (true pans through the VAE)",
                    "camera": direction,
                    "image": image,
                    "motion": read,
                    "phase": read,
                }
            )
        for seed, motion in enumerate(
            [right["up"], right["left"]]
        ):  # the model: right once, wrong once, per image
            rows.append(
                {
                    "source": "model",
                    "camera": "up",
                    "image": image,
                    "seed": seed,
                    "motion": motion,
                    "phase": motion,
                }
            )
    rows.append(
        {
            "source": "model",
            "camera": "up",
            "image": "b",
            "seed": 2,
            "motion": right["up"],
            "phase": right["up"],
        }
    )
    assert cf.measurable_images(rows) == {"a"}
    (up,) = [t for t in cf.summarise(rows, frames=8) if t["source"] == "model" and t["camera"] == "up"]
    assert (up["n"], up["right_%"]) == (5, 60.0)
    assert (up["n_measurable"], up["right_measurable_%"]) == (2, 50.0)
    assert "| model | up | 50 % (2) | 60 % (5) |" in cf.markdown([up])


def test_the_shipped_default_pans_the_default_picture_as_asked():
    """The embedded ruyi_tiny_pans on the main job's own sky picture (seed 0, the preset's 8 frames
    of 64x64, 10 steps, cfg 4): camera=left moves the content right, up moves it down (film
    convention), and static moves it far less than any pan."""
    pipe, _ = cf.build(REPO / "ruyi" / "assets" / "ruyi-tiny-pans", "cpu", [])
    travel = 7 * 8
    name, canvas = cf.held_out_canvases(0, 64, 64, travel)[0]
    assert name == "default sky"
    image = cf.start_image(canvas, 64, 64)
    moved = {}
    for camera in ("static", "left", "right", "up", "down"):
        video = pipe(image, frames=8, video_size=[64, 64], steps=10, cfg=4.0, seed=0, camera=camera, motion="2", progress=False)
        moved[camera] = cf.content_motion(cf.to_frames(video))
    expected = {"left": (1, 0), "right": (-1, 0), "up": (0, 1), "down": (0, -1)}  # (dx, dy) signs, written out
    for camera, (sx, sy) in expected.items():
        dx, dy = moved[camera]
        along, across = (dx * sx, abs(dy)) if sx else (dy * sy, abs(dx))
        assert along > 2 * across and along > 5, f"camera={camera} moved the content by {moved[camera]}"
    static = float(np.hypot(*moved["static"]))
    assert static < 0.25 * min(float(np.hypot(*moved[c])) for c in expected), moved
