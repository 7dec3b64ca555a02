"""scripts/infer.py end to end on the tiny model, and its handling of bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ruyi.cli import run
from ruyi.io import read_mp4

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SMALL = ["video_size=[64,64]", "frames=8", "steps=2"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    """The tiny checkpoint, created once through the same code path as a first run."""
    from ruyi.models.tiny import create_tiny_checkpoint

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="infer")
    path = tmp_path_factory.mktemp("models") / "ruyi-tiny"
    return create_tiny_checkpoint(path, OmegaConf.to_container(cfg.model, resolve=True))


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="infer", overrides=list(overrides))


def test_tiny_checkpoint_has_the_real_layout(tiny_path):
    for rel in (
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors", "image_encoder/config.json", "image_encoder/model.safetensors",
        "image_encoder/preprocessor_config.json", "scheduler/scheduler_config.json", "embeddings.safetensors",
        "model_index.json",
    ):  # fmt: skip
        assert (tiny_path / rel).is_file(), rel


def test_run_writes_an_mp4_with_the_asked_frames(tiny_path, tmp_path, capsys):
    out = tmp_path / "o" / "v.mp4"
    code = run(_cfg(f"model.path={tiny_path}", f"output={out}", "progress=false", "camera=left", "motion=2",
                    "video_size=[64,96]", "frames=16", "steps=2"))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    frames, fps = read_mp4(out)
    assert frames.shape == (16, 64, 96, 3) and fps == pytest.approx(24)


def test_png_output_and_end_image(tiny_path, tmp_path, capsys):
    from ruyi.io import procedural_image

    procedural_image(96, 64).save(tmp_path / "start.png")
    procedural_image(64, 64).transpose(0).save(tmp_path / "end.png")
    out = tmp_path / "frames"
    code = run(_cfg(f"model.path={tiny_path}", f"output={out}", "progress=false", f"image={tmp_path / 'start.png'}",
                    f"end_image={tmp_path / 'end.png'}", *SMALL))  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert len(list(out.glob("frame_*.png"))) == 8


BAD_INPUTS = {
    "frames=12": "frames=12 is invalid; use 1 or a multiple of 8 up to 120",
    "frames=128": "frames=128 is invalid",
    "camera=sideways": "camera='sideways' is not one of static, left, right, up, down, auto",
    "motion=5": "motion='5' is not one of 1, 2, 3, 4, auto",
    "base_resolution=1024": "base_resolution=1024 is out of range; use 384..896",
    "video_size=[60,64]": "video_size=[60, 64] is invalid",
    "sampler=pndm": "steps=2 is invalid for sampler PNDM; use an integer >= 4",
    "cfg=-1": "cfg=-1 must be a number >= 0",
    "image=/no/such.png": "image /no/such.png does not exist",
    "dtype=float8": "dtype='float8' is not one of",
    "offload=group": "use_stream=false",
    "skip_steps=-2": "skip_steps=-2 must be an integer >= 0",
}


@pytest.mark.parametrize("override", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_no_output(override, tiny_path, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    overrides = [o for o in SMALL if o.split("=")[0] != override.split("=")[0]]
    code = run(_cfg(f"model.path={tiny_path}", f"output={out}", *overrides, override))
    err = capsys.readouterr().err
    assert code == 2
    assert BAD_INPUTS[override] in err and err.count("\n") == 1, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_missing_real_weights_say_how_to_download(tmp_path, capsys):
    code = run(_cfg("model=ruyi_mini_7b", f"model.path={tmp_path / 'Ruyi-Mini-7B'}", f"output={tmp_path / 'v.mp4'}"))
    err = capsys.readouterr().err
    assert code == 2
    assert "hf download IamCreateAI/Ruyi-Mini-7B --local-dir" in err and "download=true" in err
    assert not (tmp_path / "v.mp4").exists()


def test_download_offline_fails_with_the_same_message(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    code = run(_cfg("model=ruyi_mini_7b", f"model.path={tmp_path / 'm'}", "download=true", f"output={tmp_path / 'v.mp4'}"))
    err = capsys.readouterr().err
    assert code == 2 and "download failed (OSError)" in err and "hf download" in err


def test_script_default_run_in_a_fresh_directory(tmp_path):
    """The README's main command: no arguments, creates the tiny model, writes outputs/ruyi.mp4."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "infer.py"), "video_size=[64,64]", "progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames, fps = read_mp4(tmp_path / "outputs" / "ruyi.mp4")
    assert frames.shape == (16, 64, 64, 3) and fps == pytest.approx(24)
    assert (tmp_path / "models" / "ruyi-tiny" / "transformer" / "config.json").is_file()
    assert np.asarray(frames).std() > 0


def test_script_bad_input_exit_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "infer.py"), "frames=7", "output=x.mp4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "error: frames=7 is invalid" in proc.stderr
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "models").exists()
