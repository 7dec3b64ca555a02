"""The Python API is an equal front end: a preset by name makes the same video as scripts/infer.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ruyi
from ruyi.errors import ConfigError, RuyiUserError
from ruyi.io import procedural_image, to_frames

REPO = Path(__file__).resolve().parents[1]


def test_preset_by_name_makes_the_same_video_as_the_cli(tmp_path):
    frames_dir = tmp_path / "cli_frames"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "infer.py"), f"output={frames_dir}", "camera=left", "progress=false",
         "device=cpu", f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cli = np.stack([np.asarray(Image.open(p)) for p in sorted(frames_dir.glob("frame_*.png"))])

    pipe = ruyi.load_pipeline("ruyi_tiny_pans", device="cpu")
    api = to_frames(pipe(procedural_image(), camera="left", progress=False))
    assert api.shape == (8, 64, 64, 3)  # the preset's size and frame count, not the 7B's defaults
    assert np.array_equal(api, cli)


def test_preset_defaults_give_way_to_explicit_arguments():
    pipe = ruyi.load_pipeline("ruyi_tiny_pans", device="cpu")
    assert pipe.defaults["frames"] == 8 and pipe.defaults["steps"] == 10 and list(pipe.defaults["video_size"]) == [64, 64]
    video = pipe(procedural_image(), frames=16, video_size=[32, 48], steps=2, progress=False)
    assert tuple(video.shape) == (1, 3, 16, 32, 48)


def test_unknown_preset_or_folder_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuyiUserError, match="no_such_preset_or_folder"):
        ruyi.load_pipeline("no_such_preset_or_folder", device="cpu")


def test_preset_loader_lists_presets():
    from ruyi.hydra_config import load_preset

    with pytest.raises(ConfigError, match="presets: .*ruyi_tiny_pans"):
        load_preset("nope")
