"""benchmarks/camera_following.py: the motion measurement against pans made with known offsets,
the summary by kind of image on hand-made rows, and the label-loss matrix on a random tiny
checkpoint of the pans preset."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import camera_following as cf  # noqa: E402
from ruyi.eval import heldout  # noqa: E402
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
    from ruyi.checkpoints.tiny import create_tiny_checkpoint

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
    pans = heldout.true_pans(canvas, frames=frames, height=size, width=size, speed=speed)
    start = np.asarray(heldout.start_image(canvas, size, size))
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
        heldout.true_pans(canvas, frames=frames, height=size, width=size, speed=speed + 1)


def test_the_goal_is_judged_on_images_whose_true_pans_the_measure_reads():
    right = {"left": (9.0, 0.0), "right": (-9.0, 0.0), "up": (0.0, 9.0), "down": (0.0, -9.0)}
    rows = []
    for image in ("a", "b"):
        for direction, motion in right.items():
            # image b: its true upward pan reads sideways (a stripe texture, say)
            read = (9.0, 1.0) if (image, direction) == ("b", "up") else motion
            rows.append({"source": cf.REFERENCE, "kind": "textures", "camera": direction, "image": image,
                         "motion": read, "phase": read})  # fmt: skip
        for seed, motion in enumerate([right["up"], right["left"]]):  # the model: right once, wrong once, per image
            rows.append({"source": "model", "kind": "textures", "camera": "up", "image": image, "seed": seed,
                         "motion": motion, "phase": motion})  # fmt: skip
    rows.append({"source": "model", "kind": "textures", "camera": "up", "image": "b", "seed": 2,
                 "motion": right["up"], "phase": right["up"]})  # fmt: skip
    assert cf.measurable_images(rows) == {"a"}
    table = cf.summarise(rows, frames=8)
    (up,) = [t for t in table if t["source"] == "model" and t["kind"] == "textures" and t["camera"] == "up"]
    assert (up["n"], up["right_%"]) == (5, 60.0)
    assert (up["n_measurable"], up["right_measurable_%"]) == (2, 50.0)
    assert (up["images"], up["measurable_images"]) == (2, 1)
    # the "all" lines pool the kinds: one kind here, so the same numbers
    (pooled,) = [t for t in table if t["source"] == "model" and t["kind"] == "all" and t["camera"] == "up"]
    assert {k: v for k, v in pooled.items() if k != "kind"} == {k: v for k, v in up.items() if k != "kind"}


def _model_rows(kind: str, image: str, reads: dict[str, tuple[float, float]], seeds: int = 2) -> list[dict]:
    rows = [{"source": "model", "kind": kind, "camera": camera, "image": image, "seed": seed, "motion": motion,
             "phase": motion} for camera, motion in reads.items() for seed in range(seeds)]  # fmt: skip
    rows += [{"source": cf.REFERENCE, "kind": kind, "camera": camera, "image": image, "motion": motion,
              "phase": motion} for camera, motion in cf.CONTENT.items()]  # fmt: skip  (true pans read right)
    return rows


def test_the_summary_by_kind_scores_each_kind_and_direction_and_the_goal():
    """Hand-made rows (frames=8: 7 frame steps): drawn images follow every direction with a quiet
    static; photographs get `down` wrong on one of two images and drift when static."""
    pans = {"static": (0.7, 0.0), "left": (14.0, 1.0), "right": (-14.0, 0.0), "up": (0.0, 21.0), "down": (1.0, -14.0)}
    wrong_down = {**pans, "down": (0.0, 14.0)}
    drift = {"static": (7.0, 0.0), "left": (14.0, 0.0), "right": (-14.0, 0.0), "up": (0.0, 14.0), "down": (0.0, -14.0)}
    rows = (_model_rows("drawn", "d0", pans) + _model_rows("drawn", "d1", pans)
            + _model_rows("photographs", "p0", wrong_down) + _model_rows("photographs", "p1", drift))  # fmt: skip
    kinds = {k["kind"]: k for k in cf.by_kind(cf.summarise(rows, frames=8), rows, frames=8)}
    assert list(kinds) == ["drawn", "photographs", "all"]
    drawn, photos, pooled = kinds["drawn"], kinds["photographs"], kinds["all"]
    assert drawn["right_measurable_%"] == dict.fromkeys(cf.MOVING, 100.0) and drawn["n_measurable"]["left"] == 4
    assert drawn["static_px_per_frame"] == pytest.approx(0.1)
    assert drawn["moving_px_per_frame"] == pytest.approx(np.hypot(14, 1) / 7)  # of 14, 14.04 (x2), 21 px
    assert drawn["goal_met"] and (drawn["images"], drawn["measurable_images"]) == (2, 2)
    assert photos["right_measurable_%"] == {"left": 100.0, "right": 100.0, "up": 100.0, "down": 50.0}
    assert photos["static_px_per_frame"] == pytest.approx((0.1 + 1.0) / 2) and not photos["goal_met"]
    assert pooled["right_measurable_%"]["down"] == 75.0 and pooled["n"]["down"] == 8 and not pooled["goal_met"]
    text = cf.markdown(list(kinds.values()))
    assert "| drawn | 2 (2) | 100 % (4) · all 100 % |" in text
    assert ("| photographs | 2 (2) | 100 % (4) · all 100 % | 100 % (4) · all 100 % | 100 % (4) · all 100 % "
            "| 50 % (4) · all 50 % | 0.55 |") in text
    assert text.count("| not met |") == 2 and text.count("| met |") == 1


def test_the_shipped_default_pans_the_default_picture_as_asked():
    """The embedded ruyi_tiny_pans on the main job's own sky picture (seed 0, the preset's 8 frames
    of 64x64, 10 steps, cfg 4): camera=left moves the content right, up moves it down (film
    convention), and static moves it far less than any pan."""
    pipe, _ = cf.build(REPO / "ruyi" / "assets" / "ruyi-tiny-pans", "cpu", [])
    sky = heldout.image_set("heldout", travel=28, kinds=["drawn"], per_kind=0)[0]
    assert sky.name == "default sky"
    image = heldout.start_image(sky.canvas, 64, 64)
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


def test_shards_merge_into_one_report_in_kind_order(tmp_path):
    """Runs side by side (``--shard``) each write their rows; ``--merge`` pools them, kinds in the
    set's order whichever shard held them, and its JSON can be merged again."""
    import json

    pans = {"static": (0.0, 0.0), "left": (14.0, 0.0), "right": (-14.0, 0.0), "up": (0.0, 14.0), "down": (0.0, -14.0)}
    paths = []
    for i, (kind, image) in enumerate([("photographs", "p0"), ("drawn", "d0")]):
        path = tmp_path / f"shard{i}.json"
        path.write_text(json.dumps({"args": {"frames": "8"}, "head": f"shard {i}", "seconds": 10.0 + i,
                                    "label_loss": None, "rows": _model_rows(kind, image, pans)}))  # fmt: skip
        paths.append(path)
    cf.merge(paths, tmp_path / "merged")
    merged = json.loads((tmp_path / "merged" / "camera_following.json").read_text())
    assert [k["kind"] for k in merged["by_kind"]] == ["drawn", "photographs", "all"]
    assert merged["by_kind"][-1]["n"]["left"] == 4 and merged["seconds"] == 11.0
    text = (tmp_path / "merged" / "camera_following.md").read_text()
    assert "2 runs side by side, 2 images (2 measurable), 20 videos" in text and "- shard 1" in text
    cf.merge([tmp_path / "merged" / "camera_following.json"], tmp_path / "again")
    again = json.loads((tmp_path / "again" / "camera_following.json").read_text())
    assert again["by_kind"] == merged["by_kind"]
