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
from ruyi.training.data.procedural import pan_clip, textured_canvas  # noqa: E402

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
        assert not cf.is_right({"left": "right", "right": "left", "up": "down", "down": "up"}[direction], (dx, dy))


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
