"""Teaching new camera moves: procedural zoom clips and ``finetune=control``.

Runs are a few CPU steps of ``experiment=tiny_zooms`` (the recipe the shipped zoom model is made
with) on small batches; the oracles are the source checkpoint's own files (old rows and weights
bit for bit), the measured zoom of the clips, and ruyi's inference-side LoRA merge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from ruyi.conditioning.control import MOVES
from ruyi.errors import ConfigError
from ruyi.eval.motion import content_motion, content_zoom, follows
from ruyi.training.data.procedural import ProceduralPans, zoom_clip, zoom_extent

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHIPPED = REPO / "ruyi" / "assets" / "ruyi-tiny-pans"
SMALL = [
    "batch_size=2", "num_workers=0", "data.bank_size=4", "steps_for_time=null", "warmup_steps=0",
    "trainer.accelerator=cpu", "trainer.logger=none", "trainer.checkpoint_every_n_steps=null",
    "trainer.progress_refresh_rate=0", "+trainer.enable_model_summary=false",
]  # fmt: skip


# -- procedural zooms ------------------------------------------------------------------------------
def test_procedural_zoom_clips_move_as_labelled():
    """Textures with detail everywhere (a few shapes on a flat ground give the measure nothing to read):
    each zoom reads the labelled sign and at least half its true size (rate x 7 frame steps)."""
    rates = dict(zip("1234", (0.03, 0.06, 0.09, 0.12)))
    data = ProceduralPans(frames=8, height=64, width=64, cameras=["zoom_in", "zoom_out", "left", "down"], auto_prob=0.0,
                          kinds=["noise", "fractal"], bank_size=2, length=24, seed=3)  # fmt: skip
    seen = set()
    for i in range(len(data)):
        item = data[i]
        frames = item["video"].permute(1, 2, 3, 0).numpy()
        zoom, motion = content_zoom(frames), content_motion(frames)
        move = MOVES[item["camera"]]
        if move.zoom:
            assert move.zoom * zoom > 0.5 * rates[item["motion"]] * 7, (item["camera"], item["motion"], zoom)
        else:
            assert abs(zoom) < 0.05 and follows(item["camera"], motion), (item["camera"], zoom, motion)
        seen.add(item["camera"])
    assert seen == {"zoom_in", "zoom_out", "left", "down"}
    assert data.camera_labels == seen


def test_zoom_clips_start_from_the_centre_window_and_scale_by_the_rate():
    rng = np.random.default_rng(0)
    canvas = (rng.random((140, 150, 3)) * 255).astype(np.uint8)
    top, left = (140 - 48) // 2, (150 - 64) // 2
    for direction in ("zoom_in", "zoom_out"):
        clip = zoom_clip(canvas, frames=6, height=48, width=64, direction=direction, rate=0.05)
        assert clip.shape == (6, 48, 64, 3) and clip.dtype == np.uint8
        assert np.array_equal(clip[0], canvas[top : top + 48, left : left + 64])
    assert zoom_extent(48, 64, 6, 0.05) == (64, 85)  # 48 e^0.25 = 61.6, 64 e^0.25 = 82.2, + 2
    with pytest.raises(ValueError, match="too small"):
        zoom_clip(canvas[:60, :70], frames=6, height=48, width=64, direction="zoom_out", rate=0.05)
    with pytest.raises(ValueError, match="not a zoom"):
        zoom_clip(canvas, frames=6, height=48, width=64, direction="left", rate=0.05)


def test_the_default_data_draws_pans_only_and_bad_moves_are_one_line():
    data = ProceduralPans(frames=8, height=64, width=64, bank_size=4, length=40)
    assert {data[i]["camera"] for i in range(40)} <= {"static", "left", "right", "up", "down", "auto"}
    with pytest.raises(ConfigError, match="data.cameras=\\['spiral'\\] must list moves") as err:
        ProceduralPans(cameras=["spiral"])
    assert "zoom_in" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="zoom_per_frame"):
        ProceduralPans(zoom_per_frame=[0.1, 0.2])


# -- finetune=control ------------------------------------------------------------------------------
def zoom_config(output_dir: Path, source: Path, *overrides: str):
    """``experiment=tiny_zooms`` from ``source`` (the shipped default's pans, ``pans_model``), a few CPU steps."""
    pytest.importorskip("lightning")
    pytest.importorskip("peft")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("train", overrides=["experiment=tiny_zooms", f"output_dir={output_dir}", f"model.path={source}",
                                           *SMALL, *overrides])  # fmt: skip


def render(folder: Path, camera: str) -> torch.Tensor:
    import sys

    sys.path.insert(0, str(REPO))
    from benchmarks.camera_following import build
    from ruyi.io import procedural_image

    pipe, _ = build(folder, "cpu", [])
    return pipe(procedural_image(), frames=8, video_size=[64, 64], steps=2, cfg=4.0, seed=0, camera=camera, motion="2",
                progress=False)  # fmt: skip


def test_control_rows_train_while_the_old_rows_and_weights_stay_bit_identical(tmp_path, pans_model):
    from ruyi.training.run import build_run

    out = tmp_path / "run"
    job = build_run(zoom_config(out, pans_model, "finetune.lora=null", "trainer.max_steps=2", "finetune.rows_learning_rate=0.05",
                                "data.cameras=[zoom_in,zoom_out]", "data.auto_prob=0"))  # fmt: skip
    job.fit()
    folder = job.export()
    assert folder == out / "checkpoint"
    source = load_file(str(pans_model / "embeddings.safetensors"))
    for table in (load_file(str(out / "embeddings.safetensors")), load_file(str(folder / "embeddings.safetensors"))):
        assert all(torch.equal(table[k], v) and table[k].dtype == v.dtype for k, v in source.items())
        new = sorted({k.rsplit(".", 1)[0] for k in set(table) - set(source)})
        assert new == [f"p.16x9movie{m}{c}" for m in "01234" for c in ("zoom_in", "zoom_out")]
        # each new row started as the static row of its motion (its masks stay); the rows seen moved away
        rows = [(m, c) for m in "01234" for c in ("zoom_in", "zoom_out")]
        moved = [float((table[f"p.16x9movie{m}{c}.emb1"] - source[f"p.16x9movie{m}static.emb1"]).abs().max()) for m, c in rows]
        assert max(moved) > 0.01, "no new row moved in training: the comparison would prove nothing"
        assert all(torch.equal(table[f"p.16x9movie{m}{c}.mask1"], source[f"p.16x9movie{m}static.mask1"]) for m, c in rows)
    for part in ("transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "image_encoder/model.safetensors", "scheduler/scheduler_config.json"):  # fmt: skip
        assert (folder / part).read_bytes() == (pans_model / part).read_bytes(), part
    assert not (out / "lora.safetensors").exists()
    video = render(folder, "zoom_in")
    assert video.shape == (1, 3, 8, 64, 64) and torch.isfinite(video).all()
    # the old labels render exactly as the source model renders them
    torch.testing.assert_close(render(folder, "left"), render(pans_model, "left"), rtol=0, atol=0)


def test_control_with_lora_exports_the_lora_and_a_checkpoint_with_it_merged(tmp_path, pans_model):
    import ruyi
    from ruyi.plugins import LoRAWeights
    from ruyi.training.run import build_run

    out = tmp_path / "run"
    job = build_run(zoom_config(out, pans_model, "trainer.max_steps=2", "learning_rate=1e-2", "finetune.save_dtype=float32",
                                "finetune.lora.rank=4", "finetune.lora.alpha=4"))  # fmt: skip
    job.fit()
    folder = job.export()
    assert (out / "lora.safetensors").is_file() and (out / "embeddings.safetensors").is_file()
    # the inference side's own merge of the exported LoRA into the source = the exported checkpoint
    base = ruyi.load_pipeline("ruyi_tiny_pans", device="cpu")
    LoRAWeights(path=out / "lora.safetensors", strength=1.0).apply(base)
    exported = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    merged = base.transformer.state_dict()
    assert set(exported) == set(merged)
    for key, value in merged.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=1e-6)
    source = load_file(str(SHIPPED / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(exported[k], source[k].float()) for k in source)


def test_labels_are_checked_against_the_model_before_any_weight_loads(tmp_path, pans_model):
    from ruyi.training.run import build_run

    with pytest.raises(ConfigError, match="finetune.cameras: left is already a label of the model"):
        build_run(zoom_config(tmp_path / "a", pans_model, "finetune.cameras=[left,zoom_in]"))
    with pytest.raises(ConfigError, match="no clip of the data is labelled zoom_out"):
        build_run(zoom_config(tmp_path / "b", pans_model, "data.cameras=[static,zoom_in]"))
    with pytest.raises(ConfigError, match="finetune.init_from='spiral' must be one of the model's moves"):
        build_run(zoom_config(tmp_path / "c", pans_model, "finetune.init_from=spiral"))
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):  # finetune=lora on zoom clips
        cfg = compose("train", overrides=[f"output_dir={tmp_path / 'd'}", f"model.path={pans_model}", *SMALL, "data.frames=8", "data.height=64",
                                          "data.width=64", "data.cameras=[static,zoom_in]"])  # fmt: skip
    with pytest.raises(ConfigError) as err:
        build_run(cfg)
    assert "labelled zoom_in, which the model has no rows for" in str(err.value)
    assert "finetune=control finetune.cameras=[zoom_in]" in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / name).exists() for name in "abcd")  # a refused run writes nothing
