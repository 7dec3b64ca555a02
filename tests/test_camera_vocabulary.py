"""One camera vocabulary: the labels a model accepts are its control table's rows, everywhere.

The shipped tiny default was taught ``zoom_in`` / ``zoom_out``; a copy with those rows dropped
(``pans_model``, tests/conftest.py) gets other zoom rows written into its table by hand (no
training), so the oracle is the file itself: a model without them refuses ``camera=zoom_in`` in one
line that names its labels; with them, ``--help``, ``python -m ruyi list``, the pre-flight check and
the ComfyUI dropdown show them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ruyi.conditioning.control import (
    CAMERAS, MOTIONS, MOVES, PANS, CameraMotionControl, add_rows, ordered, row_key, table_labels,
)  # fmt: skip
from ruyi.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "ruyi" / "assets" / "ruyi-tiny-pans"
ZOOM_KEYS = [f"{row_key(c, m)}.{f}" for c in ("zoom_in", "zoom_out") for m in MOTIONS for f in ("emb1", "mask1", "emb2", "mask2")]


def zoom_rows(table: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows for zoom_in/zoom_out at every motion, shaped like the table's static rows."""
    g = torch.Generator().manual_seed(0)
    rows = {}
    for key in ZOOM_KEYS:
        row, field = key.rsplit(".", 1)
        like = table[f"{row.replace('zoom_in', 'static').replace('zoom_out', 'static')}.{field}"]
        rows[key] = torch.randn(like.shape, generator=g) if like.is_floating_point() else like.clone()
    return rows


@pytest.fixture(scope="module")
def zoom_model(tmp_path_factory, pans_model) -> Path:
    path = tmp_path_factory.mktemp("models") / "ruyi-tiny-zooms"
    shutil.copytree(pans_model, path)
    table = load_file(str(path / "embeddings.safetensors"))
    save_file({**table, **zoom_rows(table)}, str(path / "embeddings.safetensors"))
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)


def test_the_vocabulary_is_the_original_table_and_the_moves_it_can_draw():
    assert CAMERAS == ("static", "left", "right", "up", "down", "auto") and MOTIONS == ("1", "2", "3", "4", "auto")
    assert PANS == CAMERAS[:-1] and {"zoom_in", "zoom_out"} <= set(MOVES)
    assert (MOVES["left"].dx, MOVES["up"].dy, MOVES["zoom_in"].zoom, MOVES["zoom_out"].zoom) == (1, 1, 1, -1)
    assert ordered(["auto", "zoom_out", "pan_spiral", "left", "static", "zoom_in"]) == (
        "static", "left", "zoom_in", "zoom_out", "pan_spiral", "auto")  # fmt: skip


def test_table_labels_are_read_from_the_keys():
    keys = ["n.default.emb1", "p.default.emb1", "p.16x9movie0auto.emb1", "p.16x9movie2left.mask2",
            "p.16x9movie3zoom_in.emb1", "p.4x3movie1up.emb1"]  # fmt: skip
    assert table_labels(keys) == (("left", "zoom_in", "auto"), ("2", "3", "auto"))


def test_a_model_without_zoom_rows_refuses_zoom_naming_its_labels(pans_model):
    control = CameraMotionControl()
    assert control.read_labels(SHIPPED) == ("static", "left", "right", "up", "down", "zoom_in", "zoom_out", "auto")
    assert control.read_labels(pans_model) == CAMERAS
    with pytest.raises(ConfigError) as err:
        control.check_choice("zoom_in", "2")
    message = str(err.value)
    assert "\n" not in message and "static, left, right, up, down, auto" in message and "zoom_in" in message


def test_a_zoom_model_accepts_its_new_labels(zoom_model):
    control = CameraMotionControl()
    assert control.read_labels(zoom_model) == ("static", "left", "right", "up", "down", "zoom_in", "zoom_out", "auto")
    control.check_choice("zoom_out", "auto")
    with pytest.raises(ConfigError, match="zoom_out, auto"):
        control.check_choice("spiral", "1")


def test_the_cli_refuses_zoom_before_any_weight_loads_and_accepts_it_with_the_rows(pans_model, zoom_model, tmp_path):
    refused = run("scripts/infer.py", "camera=zoom_in", f"model.path={pans_model}", f"output={tmp_path / 'a.mp4'}")
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: camera='zoom_in' is not one of static, left, right, up, down, auto")
    assert "loading" not in refused.stderr  # no weights were read
    made = run("scripts/infer.py", "camera=zoom_in", f"model.path={zoom_model}", "steps=2", f"output={tmp_path / 'z.mp4'}")
    assert made.returncode == 0, made.stderr[-2000:]
    assert (tmp_path / "z.mp4").is_file()
    shipped = run("scripts/infer.py", "camera=zoom_out", "steps=2", f"output={tmp_path / 's.mp4'}")  # the default has them
    assert shipped.returncode == 0 and (tmp_path / "s.mp4").is_file(), shipped.stderr[-2000:]


def test_help_list_and_comfy_show_the_labels_of_the_model(pans_model, zoom_model):
    plain = run("scripts/infer.py", "--help", f"model.path={pans_model}").stdout
    camera = next(line for line in plain.splitlines() if line.startswith("  camera "))
    assert "static | left | right | up | down | auto" in camera and "zoom" not in camera
    zoomed = run("scripts/infer.py", "--help", f"model.path={zoom_model}").stdout
    camera = next(line for line in zoomed.splitlines() if line.startswith("  camera "))
    assert "static | left | right | up | down | zoom_in | zoom_out | auto" in camera

    listed = run("-m", "ruyi", "list", str(zoom_model), str(pans_model))
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    (preset,) = [line for line in lines if line.startswith("  ruyi_tiny_pans ")]
    assert "zoom_in, zoom_out" in preset  # the shipped default's own table
    (mine,) = [line for line in lines if line.strip().startswith(str(zoom_model))]
    assert "static, left, right, up, down, zoom_in, zoom_out, auto" in mine
    (pans,) = [line for line in lines if line.strip().startswith(str(pans_model))]
    assert "static, left, right, up, down, auto" in pans and "zoom" not in pans

    sys.path.insert(0, str(REPO))
    from comfyui import choices

    assert choices.control_choices()[0] == list(CAMERAS)
    assert choices.control_choices([pans_model])[0] == list(CAMERAS)
    cameras, motions = choices.control_choices([pans_model, zoom_model])
    assert cameras == ["static", "left", "right", "up", "down", "zoom_in", "zoom_out", "auto"] and motions == list(MOTIONS)


def test_extra_rows_add_labels_on_top_of_the_checkpoint(pans_model, zoom_model, tmp_path):
    control = CameraMotionControl(extra_rows=str(zoom_model / "embeddings.safetensors"))
    assert "zoom_in" in control.read_labels(pans_model)
    control.load(pans_model)
    shipped = load_file(str(pans_model / "embeddings.safetensors"))
    assert all(torch.equal(control.table[k], v) for k, v in shipped.items())
    picked = control.select("zoom_in", "2")
    assert picked.key == "p.16x9movie2zoom_in"
    assert torch.equal(picked.positive.emb1, load_file(str(zoom_model / "embeddings.safetensors"))["p.16x9movie2zoom_in.emb1"])
    with pytest.raises(InputError, match="extra_rows=.*is not a file"):
        CameraMotionControl(extra_rows=str(tmp_path / "nothing.safetensors")).read_labels(pans_model)


def test_added_rows_must_not_change_or_misfit_the_checkpoints(pans_model):
    table = load_file(str(pans_model / "embeddings.safetensors"))
    changed = {"p.16x9movie1left.emb1": table["p.16x9movie1left.emb1"] + 1}
    with pytest.raises(InputError, match="differs from the checkpoint's"):
        add_rows(table, changed, where="x.safetensors")
    misfit = {"p.16x9movie1zoom_in.emb1": torch.zeros(1, 4, 64)}
    with pytest.raises(InputError, match=r"has shape \[1, 4, 64\], this model's rows \[1, 8, 64\]"):
        add_rows(table, misfit, where="x.safetensors")
    same = add_rows(table, {"p.16x9movie1left.emb1": table["p.16x9movie1left.emb1"].clone()}, where="x")
    assert same.keys() == table.keys()
