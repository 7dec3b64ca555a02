"""Step distillation (``finetune=distill``) and the student's sampler (``sampler=turbo``).

Oracles: diffusers' own trailing timesteps and DDIM step (the targets must land where its sampler
lands), the pipeline's guided sampler (the teacher's trajectory must be the video inference makes),
and the method's fixed point (a student that already is the unguided teacher has nothing to learn).
Runs are a step or two on the CPU with the shipped tiny model at 8 frames of 64 x 64.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors import safe_open
from safetensors.torch import save_file

pytest.importorskip("lightning")
pytest.importorskip("peft")

from ruyi import cli  # noqa: E402
from ruyi.checkpoints.student import HEADER_KEY, RECORD_FILE, StudentRecord  # noqa: E402
from ruyi.errors import ConfigError, RuyiUserError  # noqa: E402
from ruyi.overrides import compose_command_line  # noqa: E402
from ruyi.samplers.turbo import TurboSampler, trailing_timesteps  # noqa: E402
from ruyi.training.distill import NoiseLevels, rollout_grid  # noqa: E402
from ruyi.training.run import build_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TEACHER = REPO / "ruyi" / "assets" / "ruyi-tiny-pans"
SCHEDULE = json.loads((TEACHER / "scheduler" / "scheduler_config.json").read_text())
SMALL = ["batch_size=2", "num_workers=0", "trainer.accelerator=cpu", "trainer.logger=none",
         "trainer.checkpoint_every_n_steps=null", "trainer.progress_refresh_rate=0", "+trainer.enable_model_summary=false",
         "warmup_steps=0", "finetune=distill", "finetune.teacher_substeps=1"]  # fmt: skip


def distill_config(output_dir: Path, *overrides: str):
    """configs/train.yaml with finetune=distill on the shipped tiny model (teacher and start), shrunk for the CPU."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("train", overrides=[f"output_dir={output_dir}", *SMALL, *overrides])


def ddim(steps: int):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config({**SCHEDULE, "timestep_spacing": "trailing", "set_alpha_to_one": True})
    scheduler.set_timesteps(steps)
    return scheduler


# -- the sampler's grid ------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 4, 8, 12, 16, 25])
def test_trailing_timesteps_are_diffusers_trailing_spacing(steps):
    assert trailing_timesteps(steps) == ddim(steps).timesteps.tolist()


def test_turbo_sampler_refuses_steps_that_cross_a_segment_end():
    sampler = TurboSampler(scheduler_config=SCHEDULE, segments=4)
    for steps in (1, 2, 4, 8, 12):
        assert sampler.set_timesteps(steps).tolist() == trailing_timesteps(steps)
    for steps in (3, 5, 6, 7):
        with pytest.raises(ConfigError, match=f"steps={steps} does not fit the 4 segments.*use 1, 2, 4, 8"):
            sampler.set_timesteps(steps)
    three = TurboSampler(scheduler_config=SCHEDULE, segments=3)
    three.set_timesteps(6)
    with pytest.raises(ConfigError, match="steps=2 does not fit the 3 segments"):
        three.set_timesteps(2)
    with pytest.raises(ConfigError, match="sampler.segments=0"):
        TurboSampler(scheduler_config=SCHEDULE, segments=0)


def test_teacher_grid_holds_the_student_grids():
    assert rollout_grid(4, 2) == [*trailing_timesteps(8), -1]
    assert rollout_grid(4, 4)[::4] == [*trailing_timesteps(4), -1]
    assert set(trailing_timesteps(8)) <= set(rollout_grid(4, 4))
    assert rollout_grid(1, 1) == [999, -1]


# -- the targets: where diffusers' DDIM lands -------------------------------------------------
def test_ddim_step_is_diffusers_ddim_step():
    scheduler = ddim(4)
    levels = NoiseLevels(scheduler.alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 16, 2, 8, 8, generator=g), torch.randn(2, 16, 2, 8, 8, generator=g)
    for t, s in zip([999, 749, 499, 249], [749, 499, 249, -1]):
        expected = scheduler.step(v, t, x).prev_sample
        torch.testing.assert_close(levels.ddim_step(x, v, t, s), expected, rtol=1e-5, atol=1e-5)


def test_target_velocity_lands_on_the_teacher_state():
    """One DDIM step of the sampler with the target v, from x at t, arrives at the target at s:
    per row, for a segment start, a point inside a segment and the last segment."""
    g = torch.Generator().manual_seed(1)
    levels = NoiseLevels(ddim(4).alphas_cumprod)
    t, s = torch.tensor([999, 874, 249]), torch.tensor([749, 749, -1])
    x, target = torch.randn(3, 16, 2, 8, 8, generator=g), torch.randn(3, 16, 2, 8, 8, generator=g)
    v = levels.velocity_to(x, target, t, s)
    assert trailing_timesteps(8)[1:3] == [874, 749]  # 874 -> 749 is a step of the 8-step sampler
    for row, steps in zip(range(3), (4, 8, 4)):
        scheduler = ddim(steps)
        landed = scheduler.step(v[row : row + 1], int(t[row]), x[row : row + 1]).prev_sample
        torch.testing.assert_close(landed, target[row : row + 1], rtol=1e-4, atol=1e-4)


# -- the teacher's trajectory is the guided pipeline's --------------------------------------
def test_teacher_rollout_is_the_guided_8_step_pipeline(tmp_path):
    """With 2 substeps per segment the teacher walks the 8-step trailing grid: from the same noise
    it must end where the pipeline's own DDIM at cfg 4 ends, for each clip of a batch."""
    job = build_run(distill_config(tmp_path / "run", "finetune.teacher_substeps=2", "end_frame_prob=0"))
    module, method = job.module, job.finetune
    batch = job.data.train_dataloader().collate_fn([job.data.dataset[i] for i in range(2)])
    module.on_fit_start()
    method._setup(module)
    encoded = module.encoder.encode(batch)
    noise = torch.randn(encoded.x0.shape, generator=torch.Generator().manual_seed(3))
    states = method.rollout(module, encoded, batch, noise=noise)
    assert len(states) == 9
    pipe = module.pipe
    for row in range(2):
        start = batch["video"][row, :, 0].permute(1, 2, 0).numpy()
        expected = pipe(start, frames=8, video_size=[64, 64], steps=8, cfg=4.0, camera=batch["camera"][row],
                        motion=batch["motion"][row], latents=noise[row : row + 1], output_latents=True, progress=False)  # fmt: skip
        assert pipe.sampler.scheduler.timesteps.tolist() == rollout_grid(4, 2)[:-1]
        torch.testing.assert_close(states[-1][row : row + 1], expected.float(), rtol=1e-3, atol=1e-3)


# -- the method at its starting point ---------------------------------------------------------
@pytest.mark.parametrize("student", ["full", "lora"])
def test_nothing_to_learn_when_the_student_already_is_the_unguided_teacher(tmp_path, student):
    """Without guidance and with one teacher step per segment from its first point, the target is
    the teacher's own prediction: at the start (student = teacher) the loss is ~0. Guidance makes
    it large. The LoRA student's teacher is its own base weights with the adapter off."""
    losses = {}
    for cfg in (1.0, 4.0):
        job = build_run(distill_config(tmp_path / f"run{cfg}", f"finetune.student={student}", f"finetune.teacher_cfg={cfg}",
                                       "finetune.boundary_prob=1.0"))  # fmt: skip
        module = job.module
        batch = job.data.train_dataloader().collate_fn([job.data.dataset[i] for i in range(2)])
        module.on_fit_start()
        torch.manual_seed(0)
        with torch.no_grad():
            losses[cfg] = float(job.finetune.training_loss(module, batch))
    assert losses[1.0] < 1e-8, losses
    assert losses[4.0] > 1e-3, losses
    if student == "lora":
        assert job.finetune._teacher is None  # shared: no second transformer
        lora_layers = [m for m in module.transformer.modules() if hasattr(m, "disable_adapters") and hasattr(m, "lora_A")]
        assert lora_layers and not any(m.disable_adapters for m in lora_layers)  # switched back on after the rollout


# -- a run: the export, the teacher never written, inference with the student -----------------
def test_a_short_run_writes_a_student_the_turbo_preset_renders(tmp_path, capsys):
    job = build_run(distill_config(tmp_path / "run", "trainer.max_steps=1"))
    job.fit()
    state = job.module.state_dict()
    saved = {"state_dict": dict(state)}
    job.module.on_save_checkpoint(saved)  # what a Lightning checkpoint keeps: the student alone
    assert set(saved["state_dict"]) == {k for k in state if k.startswith("transformer.")}
    assert len(saved["state_dict"]) == len(job.module.transformer.state_dict())
    exported = job.export()
    job.release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint"]
    record = StudentRecord.from_json((exported / RECORD_FILE).read_text(), "test")
    assert (record.sampler, record.segments, record.teacher_cfg, record.teacher) == ("turbo", 4, 4.0, "pkg://ruyi/assets/ruyi-tiny-pans")
    # the CLI with the turbo preset: its own steps (4) and cfg (1), sampler=turbo
    out = tmp_path / "v.mp4"
    cfg = compose_command_line(["model=ruyi_tiny_pans_turbo", f"model.path={exported}", "camera=left", f"output={out}",
                                "progress=false"], config_dir=CONFIGS, config_name="infer")  # fmt: skip
    assert (cfg.steps, cfg.cfg) == (4, 1.0)
    assert cli.run(cfg) == 0, capsys.readouterr().err
    from ruyi.eval import read_video

    assert read_video(out).shape == (8, 64, 64, 3)
    # the Python API: one transformer call per step; guidance is refused before any step runs
    from dataclasses import replace

    from ruyi.assembly import PipelineSpec, build

    spec = PipelineSpec.from_preset("ruyi_tiny_pans_turbo", device="cpu")  # the preset, at the run's folder
    pipe = build(spec.replace(model=replace(spec.model, path=exported)))
    calls = []
    pipe(start_picture(), steps=4, cfg=1.0, progress=False, callbacks=[CallCounter(calls)])
    assert calls == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="cfg=4 with sampler Turbo"):
        pipe(start_picture(), steps=4, cfg=4.0, progress=False, callbacks=[CallCounter(calls)])
    assert calls == [0, 1, 2, 3]


class CallCounter:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def on_step_begin(self, state) -> None:
        self.calls.append(state.call)


def start_picture():
    from ruyi.io import procedural_image

    return procedural_image(64, 64)


def test_a_lora_student_records_itself_and_runs_only_with_its_sampler(tmp_path, capsys):
    job = build_run(distill_config(tmp_path / "run", "trainer.max_steps=1", "finetune.student=lora"))
    job.fit()
    exported = job.export()
    job.release()
    with safe_open(str(exported), framework="pt") as f:
        record = StudentRecord.from_json(f.metadata()[HEADER_KEY], "test")
    assert (record.sampler, record.segments) == ("turbo", 4)
    out = tmp_path / "v.mp4"
    lora = f"lora=[{{path: {exported}}}]"
    cfg = compose_command_line([lora, "sampler=turbo", "steps=4", "cfg=1", f"output={out}", "progress=false"],
                               config_dir=CONFIGS, config_name="infer")  # fmt: skip
    assert cli.run(cfg) == 0, capsys.readouterr().err
    assert out.is_file()


# -- bad inputs: one line, exit code 2, before any weight loads, nothing written -------------
def _lora_student(path: Path) -> Path:
    record = StudentRecord(sampler="turbo", segments=4, teacher="x", teacher_cfg=4.0, teacher_substeps=4)
    save_file({"lora_unet_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 128),
               "lora_unet_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(128, 2)}, str(path),
              metadata={HEADER_KEY: record.to_json()})  # fmt: skip
    return path


def _student_folder(path: Path, text: str | None = None) -> Path:
    path.mkdir()
    record = StudentRecord(sampler="turbo", segments=4, teacher="x", teacher_cfg=4.0, teacher_substeps=4)
    (path / RECORD_FILE).write_text(text if text is not None else record.to_json())
    return path


INFER_CASES = {  # argv (after the base), words of the message, before any checkpoint is looked up
    "cfg>1 with the guidance-free student": (["model=ruyi_tiny_pans_turbo", f"model.path={TEACHER}", "cfg=4"],
                                            "cfg=4 with sampler Turbo: it runs a step-distilled student", True),
    "steps the sampler cannot do": (["model=ruyi_tiny_pans_turbo", f"model.path={TEACHER}", "steps=3"],
                                    "steps=3 does not fit the 4 segments the student was distilled to", True),
    "sampler=turbo steps=6": (["sampler=turbo", "cfg=1", "steps=6"], "steps=6 does not fit the 4 segments", True),
    "a student folder with ddim": (["model.path={tmp}/student"], "is a step-distilled student (guidance trained in): "
                                   "pass sampler=turbo steps=4 cfg=1, not sampler=ddim", True),
    "a LoRA student with ddim": (["lora=[{{path: {tmp}/student.safetensors}}]"],
                                 "student.safetensors is a step-distilled student", True),
    "a LoRA student at other segments": (["lora=[{{path: {tmp}/student.safetensors}}]", "sampler=turbo", "cfg=1",
                                          "sampler.segments=8", "steps=8"], "pass sampler.segments=4", True),
    "a damaged record": (["model.path={tmp}/damaged"], "its distillation record is damaged", True),
    "the turbo preset before its weights exist": (["model=ruyi_tiny_pans_turbo", "model.path={tmp}/absent"],
                                                  "make them with `python scripts/train.py experiment=tiny_turbo", False),
}  # fmt: skip


@pytest.mark.parametrize("name", list(INFER_CASES))
def test_bad_few_step_input(name, tmp_path, capsys, monkeypatch):
    argv, words, preflight = INFER_CASES[name]
    _lora_student(tmp_path / "student.safetensors")
    _student_folder(tmp_path / "student")
    _student_folder(tmp_path / "damaged", text='{"sampler": "turbo"}')
    before = sorted(p.name for p in tmp_path.iterdir())

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built although the input could be checked before")

    monkeypatch.setattr(cli, "build", no_model)
    if preflight:
        monkeypatch.setattr(cli, "resolve_checkpoint", no_model)
    argv = [a.format(tmp=tmp_path) for a in argv] + [f"output={tmp_path}/v.mp4", "progress=false"]
    try:
        cfg = compose_command_line(argv, config_dir=CONFIGS, config_name="infer")
    except RuyiUserError as err:
        code, err_text = 2, f"error: {err}\n"
    else:
        code, err_text = cli.run(cfg), capsys.readouterr().err
    assert code == 2, err_text
    assert err_text.startswith("error: ") and err_text.count("\n") == 1, err_text
    assert words in err_text, err_text
    assert sorted(p.name for p in tmp_path.iterdir()) == before


TRAIN_CASES = {
    "no teacher": (["finetune.teacher=null"], "finetune=distill needs a teacher checkpoint: finetune.teacher="),
    "a teacher folder without a checkpoint": (["finetune.teacher={tmp}/empty"],
                                              "empty holds no Ruyi checkpoint (missing: transformer, vae"),
    "segments_per_clip above segments": (["finetune.segments_per_clip=9"], "finetune.segments_per_clip=9 must be an integer in [1, 4]"),
    "an unknown student": (["finetune.student=half"], "finetune.student='half' is not one of full, lora"),
    "teacher_cfg=nan": (["finetune.teacher_cfg=nan"], "finetune.teacher_cfg=nan must be a finite number"),
    "segments=0": (["finetune.segments=0"], "sampler.segments=0 must be an integer in [1, 1000]"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TRAIN_CASES))
def test_bad_distillation_input(name, tmp_path, capsys, monkeypatch):
    import ruyi.assembly
    from ruyi.training import run as training

    argv, words = TRAIN_CASES[name]
    (tmp_path / "empty").mkdir()

    def no_model(*args, **kwargs):
        raise AssertionError("weights were loaded although the value could be checked before")

    monkeypatch.setattr(ruyi.assembly, "build", no_model)
    small = [o for o in SMALL if not o.startswith("+")]  # the front door refuses keys no component reads
    argv = [*small, f"output_dir={tmp_path}/run", *(a.format(tmp=tmp_path) for a in argv)]
    began = time.process_time()
    code = training.run(compose_command_line(argv, config_dir=CONFIGS, config_name="train"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err, err
    assert time.process_time() - began < 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # not even output_dir


# -- presets build on presets as Hydra composes them ------------------------------------------
def test_the_turbo_preset_is_the_pans_preset_with_its_sampler_and_call_defaults():
    from omegaconf import OmegaConf

    from ruyi.hydra_config import load_preset

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        composed = OmegaConf.to_container(compose("infer", overrides=["model=ruyi_tiny_pans_turbo"]).model, resolve=True)
        pans = OmegaConf.to_container(compose("infer", overrides=["model=ruyi_tiny_pans"]).model, resolve=True)
    loaded = load_preset("ruyi_tiny_pans_turbo")  # the Python API's reading, without Hydra
    assert set(loaded) == set(composed)
    for key in ("components", "run", "transformer_arch", "scheduler_config", "vae_arch", "made_by", "name"):
        assert loaded[key] == composed[key], key
    assert composed["transformer_arch"] == pans["transformer_arch"] and composed["run"]["video_size"] == [64, 64]
    assert (composed["run"]["steps"], composed["run"]["cfg"], composed["components"]["sampler"]) == (4, 1.0, "turbo")


def test_a_preset_whose_defaults_do_not_end_with_self_is_refused(tmp_path, monkeypatch):
    import ruyi.hydra_config as hydra_config

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "child.yaml").write_text("defaults:\n  - _self_\n  - base\nname: child\n")
    monkeypatch.setattr(hydra_config, "CONFIGS", tmp_path)
    with pytest.raises(ConfigError, match="its defaults must be preset names followed by _self_"):
        hydra_config.load_preset("child")


# -- the evaluation script ----------------------------------------------------------------------
def test_distill_eval_judges_students_against_the_teacher(tmp_path):
    import sys

    sys.path.insert(0, str(REPO))
    from benchmarks.distill_eval import main

    out = tmp_path / "eval"
    result = main(["--student", str(TEACHER), "--kinds", "textures", "--per-kind", "1", "--seeds", "1",
                   "--student-steps", "1", "4", "--device", "cpu", "--out", str(out)])  # fmt: skip
    teacher, one, four = result["summary"]
    assert (teacher["forwards"], one["forwards"], four["forwards"]) == (20, 1, 4)
    assert teacher["psnr"] is None and one["psnr"] is not None and four["psnr"] is not None
    assert all(0 <= v <= 100 for line in result["summary"] for v in line["accuracy_%"].values())
    assert four["time_vs_teacher"] < 1.0 and one["cpu_time_vs_teacher"] < four["cpu_time_vs_teacher"]
    assert len(result["rows"]) == 3 * 17  # 5 cameras x 1 seed, plus 4 moving x 4 motions less the 4 shared
    assert {p.name for p in out.iterdir()} == {"distill_eval.md", "distill_eval.json", "strip.png"}
    assert np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "strip.png")).shape == (3 * 64, 4 * 64, 3)


def test_the_python_api_refuses_a_student_with_another_sampler_before_loading(tmp_path, monkeypatch):
    import ruyi
    import ruyi.assembly

    monkeypatch.setattr(ruyi.assembly, "build", lambda *a, **k: pytest.fail("weights were loaded"))
    folder = _student_folder(tmp_path / "student")
    with pytest.raises(ConfigError, match="is a step-distilled student.*not sampler=ddim"):
        ruyi.load_pipeline(str(folder), device="cpu")
    lora = _lora_student(tmp_path / "student.safetensors")
    with pytest.raises(ConfigError, match="student.safetensors was distilled to 4 steps; pass sampler.segments=4"):
        ruyi.load_pipeline("ruyi_tiny_pans", sampler="turbo", sampler_kwargs={"segments": 2}, plugins=[("lora", {"path": lora})])


def test_new_weights_do_not_inherit_a_students_record(tmp_path):
    """A plain fine-tune of a distilled student is no longer that student: its export drops the
    record (the distillation export writes a new one), while a copy of the same weights keeps it."""
    import shutil

    from safetensors.torch import load_file

    from ruyi.training.export import export_checkpoint

    source = tmp_path / "student"
    shutil.copytree(REPO / "ruyi" / "assets" / "ruyi-tiny-pans", source)
    (source / RECORD_FILE).write_text("{}")
    state = load_file(str(source / "transformer" / "diffusion_pytorch_model.safetensors"))
    retrained = export_checkpoint(state, source=source, folder=tmp_path / "retrained")
    assert not (retrained / RECORD_FILE).exists() and (retrained / "embeddings.safetensors").is_file()
    same = export_checkpoint(None, source=source, folder=tmp_path / "same")
    assert (same / RECORD_FILE).read_text() == "{}"
