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
    from ruyi.checkpoints.tiny import create_tiny_checkpoint

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


def test_frames_rounding_down_rounds_like_the_original_with_a_warning(tiny_path, tmp_path, caplog):
    out = tmp_path / "v.mp4"
    with caplog.at_level("WARNING"):
        code = run(_cfg(f"model.path={tiny_path}", f"output={out}", "progress=false", "video_size=[64,64]", "steps=2",
                        "frames=12", "frames_rounding=down"))  # fmt: skip
    assert code == 0
    assert read_mp4(out)[0].shape[0] == 8
    assert "frames=12 is not a multiple of 8: rounded down to 8" in caplog.text


def test_multirun_jobs_get_their_own_output_file(tmp_path):
    """A job is named by its swept values unless ``output`` interpolates something itself."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ruyi.cli import output_path

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="infer", overrides=[f"output={tmp_path}/v.mp4", "seed=3", "camera=left", "steps=2"],
                      return_hydra_config=True)  # fmt: skip
        by_seed = compose(config_name="infer", overrides=[f"output={tmp_path}/seed${{seed}}.mp4"], return_hydra_config=True)
    assert output_path(cfg) == tmp_path / "v.mp4"  # a single run: the name as given
    for node in (cfg, by_seed):
        node.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.job.config.override_dirname.exclude_keys = ["output", "steps"]  # what scripts/infer.py sets: the fixed keys
    HydraConfig.instance().set_config(cfg)
    try:
        assert output_path(cfg) == tmp_path / "v_seed=3_camera=left.mp4"
        assert output_path(by_seed) == tmp_path / "seed42.mp4"
    finally:
        HydraConfig.instance().cfg = None


def test_script_multirun_writes_one_file_per_job(tiny_path, tmp_path):
    """The README's multirun example: every job its own video, Hydra's folders under outputs/hydra."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "infer.py"), "-m", "seed=1,2", f"model.path={tiny_path}",
         "video_size=[16,16]", "frames=1", "steps=1", "progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = tmp_path / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == ["hydra", "ruyi_seed=1.mp4", "ruyi_seed=2.mp4"]
    first, second = (read_mp4(outputs / f"ruyi_seed={i}.mp4")[0] for i in (1, 2))
    assert first.shape == (1, 16, 16, 3) and not np.array_equal(first, second)  # seeds 1 and 2


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
    """The README's main command: no arguments, the shipped ruyi_tiny_pans at its preset's size
    (8 frames of 64x64), writes outputs/ruyi.mp4 and nothing else in the folder."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "infer.py"), "progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames, fps = read_mp4(tmp_path / "outputs" / "ruyi.mp4")
    assert frames.shape == (8, 64, 64, 3) and fps == pytest.approx(24)
    assert not (tmp_path / "models").exists()  # the default is shipped, not created
    assert np.asarray(frames).std() > 0


def test_script_random_tiny_model_is_created_on_first_use(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "infer.py"), "model=ruyi_tiny", "video_size=[64,64]", "frames=8",
         "steps=2", "progress=false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_mp4(tmp_path / "outputs" / "ruyi.mp4")[0].shape == (8, 64, 64, 3)
    assert (tmp_path / "models" / "ruyi-tiny" / "transformer" / "config.json").is_file()


def test_script_bad_input_exit_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "infer.py"), "frames=7", "output=x.mp4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "error: frames=7 is invalid" in proc.stderr
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "models").exists()


def test_a_preset_names_the_classes_its_checkpoint_was_made_with():
    from ruyi.hydra_config import spec_fields

    fields = spec_fields(_cfg("model=ruyi_tiny_pans"))
    assert fields["vae"].name == "pixel_patch"  # over the vae group's default (magvit)
    assert spec_fields(_cfg("model=ruyi_tiny"))["vae"].name == "magvit"


def test_preset_components_must_be_registered():
    from ruyi.errors import ConfigError
    from ruyi.hydra_config import spec_fields

    with pytest.raises(ConfigError, match=r"model.components.vae='nope' is not registered"):
        spec_fields(_cfg("model=ruyi_tiny_pans", "model.components.vae=nope"))
    with pytest.raises(ConfigError, match=r"model.components.colour: not a component group"):
        spec_fields(_cfg("model=ruyi_tiny_pans", "+model.components.colour=magvit"))


def test_a_pkg_path_points_into_the_installed_package():
    from ruyi.hydra_config import _absolute

    assert Path(_absolute("pkg://ruyi/assets/x")) == REPO / "ruyi" / "assets" / "x"
    assert Path(_absolute("models/x")) == Path.cwd() / "models" / "x"


def test_a_preset_without_a_repo_never_suggests_downloading_none(tmp_path, capsys):
    code = run(_cfg("model=ruyi_tiny_pans", f"model.path={tmp_path / 'absent'}", f"output={tmp_path / 'o.mp4'}"))
    err = capsys.readouterr().err
    assert code == 2 and "ruyi-tiny-pans weights not found" in err and "None" not in err
    assert not (tmp_path / "o.mp4").exists()
