"""benchmarks/random_checkpoint.py (a random checkpoint in the real layout, written only into a folder
of its own) and ``benchmarks/memory_rows.py --checkpoint`` (rows that load it through the loader)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import memory_rows
from benchmarks.random_checkpoint import MARKER, check_ours, write_random_checkpoint
from ruyi.checkpoints import is_checkpoint
from ruyi.errors import CheckpointError

PRESET = "ruyi_tiny_pans"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("random") / "ckpt", PRESET)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_written_folder_loads_through_the_loader(written):
    from hydra import compose, initialize_config_dir

    from ruyi.assembly import PipelineSpec, build

    assert is_checkpoint(written) and json.loads((written / MARKER).read_text())["preset"] == PRESET
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(
            config_name="benchmark", overrides=[f"model={PRESET}", "device=cpu", f"model.path={written}"]
        )
    pipe = build(PipelineSpec.from_config(cfg).validate(), weights="checkpoint")
    assert pipe.model_path == written
    assert sum(p.numel() for p in pipe.modules["transformer"].parameters()) > 0


def test_rewrites_nothing_and_completes_a_missing_part(written, tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(written, copy)
    before = _snapshot(copy)
    write_random_checkpoint(copy, PRESET)
    assert _snapshot(copy) == before  # complete: nothing written again
    shutil.rmtree(copy / "transformer")
    (copy / ".transformer.partial").mkdir()  # what an interrupted run leaves
    (copy / ".transformer.partial" / "diffusion_pytorch_model.safetensors").write_bytes(b"cut short")
    write_random_checkpoint(copy, PRESET)
    assert is_checkpoint(copy) and not (copy / ".transformer.partial").exists()
    after = _snapshot(copy)
    assert after["vae/config.json"] == before["vae/config.json"]  # the other parts left as they were
    assert (
        after["transformer/diffusion_pytorch_model.safetensors"][0]
        == before["transformer/diffusion_pytorch_model.safetensors"][0]
    )


def test_refuses_a_folder_it_did_not_write(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="did not write it"):
        write_random_checkpoint(theirs, PRESET)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        check_ours(tmp_path / "file", PRESET)
    assert check_ours(tmp_path / "new", PRESET) is False  # absent or empty: free to write
    (tmp_path / "empty").mkdir()
    assert check_ours(tmp_path / "empty", PRESET) is False


def test_refuses_its_own_folder_of_another_preset(written):
    with pytest.raises(CheckpointError, match="not 'ruyi_mini_7b'"):
        check_ours(written, "ruyi_mini_7b")
    assert check_ours(written, PRESET) is True


@pytest.fixture
def jobs(monkeypatch):
    """run_job stood in for: records the overrides, returns a plausible CPU result."""
    calls: list[list[str]] = []

    def run_job(overrides, timeout_s):
        calls.append(overrides)
        step = 2.0 if "offload=group" in overrides else 1.0
        return {"status": "ok", "step_s": step, "peak_gib": 1.0, "peak_encode_gib": 0.5, "peak_denoise_gib": 1.0,
                "peak_decode_gib": 0.7, "weights_gib": 0.1, "host_peak_gib": 3.0, "host_load_peak_gib": 2.0,
                "host_peak_anon_gib": 1.5, "load_s": 4.0, "device": "cpu", "plan": {"strategies": []}}  # fmt: skip

    monkeypatch.setattr(memory_rows, "run_job", run_job)
    return calls


def test_rows_load_the_checkpoint_folder(written, jobs, tmp_path, capsys):
    out = tmp_path / "out"
    common = [
        "--model",
        PRESET,
        "--checkpoint",
        str(written),
        "--sizes",
        "64",
        "--frames",
        "8",
        "--out",
        str(out),
        "device=cpu",
    ]
    assert memory_rows.main(["--rules", "group_lean_disk", "--offload-dir", str(tmp_path), *common]) == 0
    assert memory_rows.main(["--rules", "none", *common]) == 0  # the ratio's base, measured by a later call
    disk, none = jobs
    for overrides in jobs:
        assert "bench.weights=checkpoint" in overrides and f"model.path={written.resolve()}" in overrides
        assert f"model={PRESET}" in overrides
    assert "offload.use_stream=false" in disk and f"offload.disk_dir={tmp_path.resolve()}" in disk
    assert not any(o.startswith("offload.") for o in none)
    table = (out / "memory_rows.md").read_text()
    assert (
        "| `group_lean_disk` | 64² x 8 | checkpoint | 1.00 (0.50 / 1.00 / 0.70) | 3.00 | 2.00 | 1.50 | 4.0 | 2.00 | 2.000 | cpu |"
        in table
    )
    assert len(table.strip().splitlines()) == 4


def test_rows_refuse_a_folder_before_any_job(jobs, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "photo.png").write_bytes(b"x")
    args = ["--model", PRESET, "--rules", "none", "--sizes", "64", "--out", str(tmp_path / "out")]
    assert memory_rows.main([*args, "--checkpoint", str(theirs), "--write-checkpoint"]) == 2
    assert "did not write it" in capsys.readouterr().err
    assert memory_rows.main([*args, "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "--write-checkpoint" in capsys.readouterr().err
    assert jobs == [] and sorted(p.name for p in theirs.iterdir()) == ["photo.png"]
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(SystemExit):
        memory_rows.main([*args, "model=ruyi_mini_7b"])
    with pytest.raises(SystemExit):
        memory_rows.main([*args, "--write-checkpoint"])
