"""eval=on in a sweep: each job judged against the cached reference video of its request; jobs'
videos named by their swept values and never replacing an earlier sweep's; the report's quality
columns."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from ruyi.errors import ConfigError
from ruyi.eval.sweep import SweepEval, append_line
from ruyi.io import read_mp4
from ruyi.multirun import named_by, naming_overrides

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _infer(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "infer.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


# steps=3 with memory=inplace is the reference's request made with a lossless lever; steps=2 is lossy
SWEEP = ["-m", "eval=on", "steps=2,3", "memory=inplace", "camera=left", 'eval.reference=["steps=3"]',
         "eval.metrics=[psnr,ssim,camera,keyframes,flicker]", "progress=false"]  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    proc = _infer(SWEEP, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (cwd / "outputs" / "eval.jsonl").read_text().splitlines()]
    return cwd, proc, lines


def test_each_job_appends_one_line_with_its_overrides_and_metrics(sweep):
    _, _, lines = sweep
    assert len(lines) == 2
    by_steps = {next(o for o in line["overrides"] if o.startswith("steps=")): line for line in lines}
    assert sorted(by_steps) == ["steps=2", "steps=3"]
    for line in lines:
        assert {"eval=on", "memory=inplace", "camera=left"} <= set(line["overrides"])
        assert line["seconds"] > 0 and line["cpu_seconds"] > 0 and line["peak_gib"] is None  # CPU: no GPU peak
        assert line["request"]["camera"] == "left" and line["request"]["seed"] == 42
        assert line["shape"] == [8, 64, 64]
        metrics = line["metrics"]
        assert metrics["camera_direction"] in ("static", "left", "right", "up", "down", "zoom_in", "zoom_out")
        assert metrics["camera_correct"] == (metrics["camera_direction"] == "left")
        assert metrics["start_frame_psnr"] is not None and metrics["flicker"] is not None


def test_the_reference_is_made_once_and_reused(sweep):
    cwd, proc, lines = sweep
    assert [p.suffix for p in (cwd / "outputs" / "eval_reference").iterdir()] == [".npz"]
    logs = proc.stdout + proc.stderr  # Hydra's job log goes to the console
    assert logs.count("eval: making the reference") == 1
    assert logs.count("from the cache") == 1
    assert lines[0]["reference"]["key"] == lines[1]["reference"]["key"]
    assert [line["reference"]["made_now"] for line in lines] == [True, False]


def test_a_lossless_lever_scores_as_lossless_and_a_lossy_one_does_not(sweep):
    _, _, lines = sweep
    psnr = {next(o for o in line["overrides"] if o.startswith("steps=")): line["metrics"]["psnr"] for line in lines}
    assert psnr["steps=3"] >= 40  # memory=inplace against the plain path, same request and steps
    assert psnr["steps=2"] < 40  # one step fewer is another video


def test_videos_are_named_by_their_swept_values(sweep):
    cwd, _, lines = sweep
    outputs = cwd / "outputs"
    assert sorted(p.name for p in outputs.glob("*.mp4")) == ["ruyi_steps=2.mp4", "ruyi_steps=3.mp4"]
    assert sorted(Path(line["video"]).name for line in lines) == ["ruyi_steps=2.mp4", "ruyi_steps=3.mp4"]
    assert read_mp4(outputs / "ruyi_steps=2.mp4")[0].shape == (8, 64, 64, 3)


def test_a_second_identical_sweep_does_not_replace_the_first(sweep):
    cwd, _, _ = sweep
    outputs = cwd / "outputs"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs.glob("*.mp4")}
    lines_before = (outputs / "eval.jsonl").read_text()
    proc = _infer(SWEEP, cwd)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "ruyi_steps=2.mp4" in errors[0] and "overwrite=true" in errors[0], proc.stderr
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs.glob("*.mp4")} == before
    assert (outputs / "eval.jsonl").read_text() == lines_before


# -- the reference's config ----------------------------------------------------------------------
def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="infer", overrides=list(overrides))


def test_the_reference_keeps_the_request_and_resets_every_lever(tmp_path):
    job = _cfg("eval=on", f"eval.out={tmp_path}/e.jsonl", f"eval.cache={tmp_path}/c", "sampler=euler", "steps=5",
               "plugin=[teacache]", "memory=inplace", "cfg=2", "seed=3", "camera=up", "motion=2", "frames=16", "dtype=bfloat16")  # fmt: skip
    judge = SweepEval.from_config(job)
    ref = judge.reference_config(job)
    # the preset's defaults (configs/model/ruyi_tiny_pans.yaml, configs/infer.yaml), written out here
    assert ref.sampler._target_.endswith("DDIMSampler") and ref.steps == 10 and ref.cfg == 4.0
    assert not ref.get("plugin") and ref.get("memory") is None and ref.dtype == "float32" and ref.eval is None
    assert (ref.seed, ref.camera, ref.motion, ref.frames) == (3, "up", 2, 16)
    other = _cfg("eval=on", f"eval.out={tmp_path}/e.jsonl", f"eval.cache={tmp_path}/c", "seed=4", "camera=up")
    assert judge.reference_key(ref) != judge.reference_key(judge.reference_config(other))
    same = _cfg("eval=on", f"eval.out={tmp_path}/e.jsonl", f"eval.cache={tmp_path}/c", "sampler=pndm", "seed=3",
                "camera=up", "motion=2", "frames=16")  # fmt: skip
    assert judge.reference_key(ref) == judge.reference_key(judge.reference_config(same))


def test_eval_reference_overrides_apply(tmp_path):
    job = _cfg("eval=on", 'eval.reference=["sampler=euler","steps=50"]', f"eval.cache={tmp_path}/c", "steps=5")
    ref = SweepEval.from_config(job).reference_config(job)
    assert ref.sampler._target_.endswith("EulerSampler") and ref.steps == 50


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("eval.metrics=[psnr,foo]", "'foo' is not a metric; valid names:"),
        ("eval.metrics=[]", "must be a list of metric names"),
        ('eval.reference=["seed=1"]', "changes the seed"),
        ('eval.reference=["model=ruyi_tiny"]', "changes the model"),
        ('eval.reference=["sampler=foo"]', "does not compose"),
        ("eval.out=results.txt", "give a .jsonl file"),
    ],
)
def test_bad_eval_values_are_one_line_before_any_weights(override, words, tmp_path, monkeypatch, capsys):
    from ruyi import cli

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built although eval.* could be checked before")

    monkeypatch.setattr(cli, "build", no_model)
    monkeypatch.setattr(cli, "resolve_checkpoint", no_model)
    code = cli.run(_cfg("eval=on", override, f"output={tmp_path}/v.mp4", f"eval.cache={tmp_path}/c"))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err, err
    with pytest.raises(ConfigError):
        SweepEval.from_config(_cfg("eval=on", override, f"eval.cache={tmp_path}/c"))


def test_the_script_refuses_a_bad_eval_block_once_before_a_sweep(tmp_path):
    proc = _infer(["-m", "eval=on", "steps=2,3", "eval.metrics=[psnr,foo]"], tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "'foo' is not a metric" in errors[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


# -- pieces ----------------------------------------------------------------------------------------
def _append_many(path: str, worker: int) -> None:
    for i in range(200):
        append_line(Path(path), {"worker": worker, "i": i, "pad": "x" * 3000})


def test_lines_appended_by_concurrent_processes_stay_whole(tmp_path):
    path = tmp_path / "e.jsonl"
    procs = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(200)]


def test_names_from_swept_values():
    base = Path("/o/ruyi.mp4")
    assert named_by(base, ["sampler=euler", "steps=5"]) == Path("/o/ruyi_sampler=euler_steps=5.mp4")
    assert named_by(base, ["image=/data/in/cat.png", "video_size=[64,96]"]) == Path("/o/ruyi_image=cat.png_video_size=64-96.mp4")
    assert named_by(base, ["+memory.options.x='a b'"]) == Path("/o/ruyi_memory.options.x=a-b.mp4")
    assert named_by(base, []) == base
    long = named_by(base, [f"image=/x/{'a' * 300}.png"])
    assert len(long.name) <= 200 and long.suffix == ".mp4"
    assert long != named_by(base, [f"image=/x/{'a' * 299}b.png"])  # a hash keeps long names apart


def test_only_swept_keys_name_the_jobs():
    (override,) = naming_overrides(["-m", "steps=2,3", "seed=1", "model.path=/m", "hydra/launcher=basic"])
    assert override == "hydra.job.config.override_dirname.exclude_keys=['hydra/launcher','model.path','seed']"
    assert naming_overrides(["steps=2"]) == []  # not a multirun


# -- the report ------------------------------------------------------------------------------------
def _line(overrides, psnr, camera_correct, *, weights="checkpoint", seconds=2.0, **extra):
    metrics = {"psnr": psnr, "ssim": 0.9, "camera_correct": camera_correct, "motion_px_per_frame": 1.0, "flicker": 2.0}
    return {"overrides": overrides, "seconds": seconds, "peak_gib": None, "weights": weights, "shape": [8, 64, 64],
            "metrics": metrics, **extra}  # fmt: skip


def test_report_shows_quality_beside_time_and_marks_random_weights(tmp_path):
    rows = [
        _line(["eval=on", "sampler=euler", "seed=1", "camera=left"], 30.0, True, seconds=1.0),
        _line(["eval=on", "sampler=euler", "seed=2", "camera=left"], 34.0, False, seconds=3.0),
        _line(["eval=on", "memory=inplace", "seed=1"], 100.0, None, cpu_seconds=0.75),
        _line(["eval=on", "plugin=[teacache]", "seed=1"], 25.0, True, notes={"TeaCache": {"skipped_steps": 6}}, steps=10),
        {"status": "ok", "overrides": ["offload=group", "frames=24"], "frames": 24, "resolution": 512, "weights": "random",
         "peak_gib": 2.5, "step_s": 0.5, "total_s_extrapolated": 20.0, "seconds": 9.0,
         "quality": {"psnr": 11.0, "ssim": 0.1, "camera_correct": False, "motion_px_per_frame": 3.0, "flicker": 40.0}},
    ]  # fmt: skip
    results = tmp_path / "eval.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "report.py"), str(results), "--out", str(tmp_path / "r")],
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "r" / "tables.md").read_text()
    assert "| setting |" in table and "PSNR dB (worst)" in table and "s/video" in table and "peak GiB" in table
    rows_by_setting = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| `")}
    euler = rows_by_setting["`sampler=euler`"]
    # PSNR of the mean MSE: 255^2/10^3 and 255^2/10^3.4 -> 10 log10(255^2 / 45.456) = 31.55
    assert "31.6 (30.0)" in euler and "50 % (1/2)" in euler and "| 2.00 |" in euler and "| 2 |" in euler
    assert "| identical |" in rows_by_setting["`memory=inplace`"] and "| 0.75 |" in rows_by_setting["`memory=inplace`"]
    assert "CPU s/video" in table
    assert "skips 6.0 of 10 steps" in rows_by_setting["`plugin=[teacache]`"]
    group = rows_by_setting["`offload=group`"]
    assert group.count("random weights") == 5 and "11.0" not in group and "2.50" in group
    assert "24x512x512" in group  # two shapes in the file: the shape column appears
    if "matplotlib" in proc.stderr:  # without the bench extra: tables, and a note instead of plots
        assert "note: no plots" in proc.stderr


def test_report_pareto_plot_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(REPO))
    from benchmarks.report import pareto_plot

    rows = [_line(["sampler=euler"], 30.0, True), _line(["steps=25"], 40.0, True, seconds=5.0)]
    assert pareto_plot(rows, tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 0
    assert not pareto_plot([_line(["x=1"], 30.0, True, weights="random")], tmp_path / "q.png")


def test_report_reads_numbers_it_did_not_make():
    """The table's PSNR is that of the mean squared error over the videos (an identical one adds 0),
    and the worst video's: checked against numpy on other values."""
    sys.path.insert(0, str(REPO))
    from benchmarks.report import pool

    values = [21.5, 40.25, 33.0, 100.0]
    (row,) = pool([_line(["x=1"], v, None) for v in values])
    mse = np.array([255.0**2 / 10 ** (v / 10) for v in values[:3]] + [0.0])
    assert row["psnr"] == pytest.approx(10 * np.log10(255.0**2 / mse.mean()))
    assert row["psnr_min"] == 21.5 and row["identical"] == 1 and row["camera_judged"] == 0


def test_a_benchmark_job_with_eval_on_judges_its_whole_video(tmp_path):
    """benchmarks/measure.py with eval=on: the whole video, judged; random weights are recorded as such."""
    sys.path.insert(0, str(REPO))
    from benchmarks.measure import measure

    overrides = ["model=ruyi_tiny", "device=cpu", "dtype=float32", "frames=8", "bench.resolution=64",
                 "bench.weights=random", "steps=3", "bench.warmup_steps=1", "eval=on", 'eval.reference=["steps=3"]',
                 f"eval.out={tmp_path}/e.jsonl", f"eval.cache={tmp_path}/c", "eval.metrics=[psnr,flicker]"]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="benchmark", overrides=overrides)
    judge = SweepEval.from_config(cfg, config_name="benchmark", config_dir=CONFIGS)
    result = measure(cfg, judge=judge, overrides=overrides)
    assert len(result["step_times_s"]) == 3 and len(list((tmp_path / "c").iterdir())) == 1
    assert result["quality"]["psnr"] == 100.0  # the same settings as its reference: the same video
    (line,) = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert line["weights"] == "random" and line["overrides"] == overrides and line["steps"] == 3


def test_levers_script_lists_groups_and_refuses_bad_ones(tmp_path):
    def levers(*args):
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / "levers.py"), "--out", str(tmp_path), *args],
                              env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip

    listed = levers("--list")
    assert listed.returncode == 0 and "teacache" in listed.stdout and "fp8_compute" in listed.stdout
    for args, words in ((["--levers", "nope"], "unknown lever group"), (["--levers", "fp8_compute"], "need --device cuda")):
        proc = levers(*args)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing run, nothing written
