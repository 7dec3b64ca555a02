"""The ``parallel`` group from the outside: checks that fail before any weight loads (and join
nothing), the presets of the one strategy class, and real ``torchrun`` launches of scripts/infer.py
on two CPU processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from ruyi.assembly import PipelineSpec
from ruyi.cli import run
from ruyi.errors import AcceleratorRequired, ConfigError
from ruyi.overrides import check_overrides
from ruyi.parallel import ParallelStrategy

REPO = Path(__file__).resolve().parents[1]
SMALL = ["video_size=[64,64]", "frames=8", "steps=2", "progress=false", "seed=3"]


@pytest.fixture()
def world(monkeypatch):
    """Pretend torchrun started ``n`` processes (check reads WORLD_SIZE; nothing joins a group)."""

    def set_world(n: int) -> None:
        monkeypatch.setenv("WORLD_SIZE", str(n))

    return set_world


def refused(exc_type, parallel: str, options: dict | None = None, path=None, **spec) -> str:
    """The one-line error the assembly's ``validate()`` (before any weight) gives for this spec."""
    strategies = {"parallel": (parallel, options or {})}
    with pytest.raises(exc_type) as caught:
        PipelineSpec.from_names(path, strategies=strategies, device="cpu", **spec).validate()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_world_size_must_equal_the_product_and_the_error_names_layouts(world):
    world(4)
    message = refused(ConfigError, "ulysses", {"ulysses": 2})
    assert "4 process(es)" in message and "uses 2" in message
    assert "parallel.ulysses=4" in message and "parallel.cfg=2 parallel.ulysses=2" in message
    world(1)
    assert "torchrun" in refused(ConfigError, "cfg", {"cfg": 2})
    world(2)
    assert "parallel.cfg=2" in refused(ConfigError, "none", {"ulysses": 1})  # two processes would do the same work


def test_ulysses_takes_every_rank_cfg_leaves(world):
    world(4)
    assert ParallelStrategy(cfg=2).degrees(4).ulysses == 2
    assert ParallelStrategy().degrees(4).ulysses == 4  # a valid layout validates in the torchrun tests


def test_heads_must_divide(world, fixture_dir):
    world(4)  # the tiny model has 2 heads
    message = refused(ConfigError, "ulysses", path=fixture_dir)
    assert "2 attention heads" in message and "valid: 1, 2" in message


def test_tokens_per_frame_must_divide(world):
    world(2)
    with pytest.raises(ConfigError, match="9 tokens per frame.*valid: 1, 3"):
        ParallelStrategy().check_request(SimpleNamespace(height=48, width=48))
    ParallelStrategy().check_request(SimpleNamespace(height=64, width=64))


def test_offload_that_streams_weights_is_refused(world):
    world(2)
    message = refused(ConfigError, "cfg", offload="model")
    assert "offload=model" in message and "offload=none" in message


def test_sharding_needs_processes_and_pipeline_dtype_weights(world):
    world(1)
    refused(ConfigError, "none", {"shard_weights": True})
    world(2)
    assert "precision=bf16" in refused(ConfigError, "cfg", {"shard_weights": True}, precision="fp8_lite")


def test_ring_needs_cuda(world):
    world(2)
    refused(AcceleratorRequired, "ulysses", {"ulysses": 1, "ring": 2})


def test_bad_degrees(world):
    world(2)
    assert "valid: 1 or 2" in refused(ConfigError, "cfg", {"cfg": 4})
    assert ">= 1" in refused(ConfigError, "ulysses", {"ulysses": 0})


def test_the_old_attention_backend_key_names_attention():
    """The kernel of the sequence-parallel self-attention is ``attention=``'s, like every other one."""
    for argv in (["parallel=ulysses", "parallel.attention_backend=flash"], ["+parallel.attention_backend=native"]):
        message = check_overrides(argv, config_dir=REPO / "configs", config_name="infer")
        assert message.startswith("parallel.attention_backend is now attention=<name>"), message
        assert "\n" not in message
    message = refused(ConfigError, "ulysses", {"attention_backend": "native"})  # the Python API
    assert "attention_backend" in message and "cfg, ulysses, ring, shard_weights" in message


def test_presets_are_degrees_of_one_class():
    """``parallel=none|ulysses|cfg`` select one registered class with different degrees; degrees
    set on top combine (``parallel=cfg parallel.ulysses=2`` = ``parallel=ulysses parallel.cfg=2``)."""
    from ruyi.hydra_config import spec_fields
    from ruyi.registry import PARALLELS

    assert {PARALLELS.get(name) for name in ("none", "ulysses", "cfg")} == {ParallelStrategy}
    found = {}
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        for overrides in (["parallel=none"], ["parallel=ulysses"], ["parallel=cfg"], ["parallel=cfg", "parallel.ulysses=2"],
                          ["parallel=ulysses", "parallel.cfg=2"], ["parallel.cfg=2"]):  # fmt: skip
            (component,) = [c for c in spec_fields(compose(config_name="infer", overrides=overrides))["strategies"]
                            if c.kind == "parallel"]  # fmt: skip
            strategy = component.create()
            assert type(strategy) is ParallelStrategy
            found[" ".join(overrides)] = (strategy.cfg, strategy.ulysses, strategy.ring, strategy.shard_weights)
    assert found == {
        "parallel=none": (1, 1, 1, False), "parallel=ulysses": (1, None, 1, False), "parallel=cfg": (2, 1, 1, False),
        "parallel=cfg parallel.ulysses=2": (2, 2, 1, False), "parallel=ulysses parallel.cfg=2": (2, None, 1, False),
        "parallel.cfg=2": (2, 1, 1, False),
    }  # fmt: skip


def test_validation_joins_no_process_group(world, fixture_dir):
    """``check`` reads WORLD_SIZE only: a valid 2-process layout validates in one process without a
    group, and leaves the environment as it was; building needs the group the entry point joins."""
    import torch.distributed as dist

    import ruyi

    world(2)
    before = dict(os.environ)
    plan = PipelineSpec.from_names(fixture_dir, strategies={"parallel": ("ulysses", {})}, device="cpu").validate()
    assert not dist.is_initialized() and dict(os.environ) == before
    (strategy,) = [s for s in plan.strategies if isinstance(s, ParallelStrategy)]
    assert strategy.degrees(2).ulysses == 2 and strategy.groups is None
    with pytest.raises(ConfigError, match="init_distributed"):
        ruyi.load_pipeline(fixture_dir, strategies={"parallel": ("ulysses", {})}, device="cpu")
    assert not dist.is_initialized()


def test_cli_refuses_a_layout_without_its_processes(fixture_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "x.mp4"
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="infer", overrides=["model=ruyi_tiny", f"model.path={fixture_dir}", f"output={out}", "parallel=ulysses",
                                                      "parallel.ulysses=2", *SMALL])  # fmt: skip
    assert run(cfg) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 1 process(es)") and "\n" not in err
    assert not out.exists()


def test_python_api_checks_before_loading(tmp_path, monkeypatch):
    import ruyi

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="1 process"):  # the folder is empty: no weights were read
        ruyi.load_pipeline(tmp_path, strategies={"parallel": ("cfg", {"cfg": 2})})


def torchrun_matches_one_process(common: list[str], parallel: list[str], tmp_path: Path, capsys) -> None:
    """``torchrun --nproc-per-node 2 scripts/infer.py *parallel *common``: rank 0 alone prints and
    writes; its frames equal a single-process run's of ``common`` (PNG frames, +-1 level)."""
    single, double = tmp_path / "single", tmp_path / "double"
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        assert run(compose(config_name="infer", overrides=[*common, f"output={single}"])) == 0
    capsys.readouterr()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(REPO / "scripts" / "infer.py"), *parallel, *common,
           f"output={double}", f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    printed = [line for line in done.stdout.splitlines() if not line.startswith("[")]  # not log records
    assert printed == [str(double)], done.stdout  # printed once, by rank 0
    assert done.stdout.count("][ruyi][INFO] - wrote ") == 1, done.stdout  # logged once
    names = sorted(p.name for p in single.iterdir())
    assert names and names == sorted(p.name for p in double.iterdir())
    for name in names:
        a, b = (np.asarray(Image.open(folder / name), dtype=np.int16) for folder in (single, double))
        assert np.abs(a - b).max() <= 1, name


def test_torchrun_two_processes_write_one_output_equal_to_one_process(fixture_dir, tmp_path, capsys):
    common = ["model=ruyi_tiny", f"model.path={fixture_dir}", f"image={fixture_dir / 'start.png'}", "device=cpu", *SMALL]
    torchrun_matches_one_process(common, ["parallel=ulysses", "parallel.ulysses=2"], tmp_path, capsys)


def test_torchrun_shipped_default_at_80px_equals_one_process(tmp_path, capsys):
    """The shipped default (ruyi_tiny_pans: 1x1 patches, 4 heads) at 80x80 px: 10x10 tokens a frame,
    5 patch rows per rank under ``parallel.ulysses=2``; the video equals one process's."""
    common = ["device=cpu", "video_size=[80,80]", "frames=8", "steps=2", "progress=false", "seed=3"]
    torchrun_matches_one_process(common, ["parallel.ulysses=2"], tmp_path, capsys)


def test_paper_projection_starts_from_the_measured_step():
    """benchmarks/parallel_model.py: 1 GPU reproduces RESULTS.md (768x120: 17.16 s/step, 38.7 GiB
    denoise peak); CFG halves the compute; sharding cuts weight memory; PCIe makes Ulysses pay."""
    sys.path.insert(0, str(REPO))
    from benchmarks.parallel_model import Measured, Model, project

    model = Model.count()
    measured = Measured.load(model)
    shape = (768, 120)
    one = project(model, measured, shape, 1, 1, False, 900.0)
    assert one["step_s"] == pytest.approx(17.16, abs=0.01) and one["denoise_gib"] == pytest.approx(38.7, abs=0.3)
    cfg = project(model, measured, shape, 2, 1, False, 900.0)
    assert cfg["step_s"] == pytest.approx(one["step_s"] / 2, rel=0.01)
    sharded = project(model, measured, shape, 2, 1, True, 900.0)
    assert cfg["denoise_gib"] - sharded["denoise_gib"] > 5  # half of ~13 GiB of block weights, minus 2 blocks
    nvlink, pcie = (project(model, measured, shape, 1, 2, False, gbs)["step_s"] for gbs in (900.0, 64.0))
    assert pcie > nvlink > one["step_s"] / 2


def test_tokens_per_frame_follow_the_checkpoints_patch_size(world):
    """The shipped default has 1x1 patches: 80x80 px is 10x10 latents, 100 tokens a frame, which
    split over 2 ranks (at the 7B's 2x2 patches it would be 25 and refused)."""
    import ruyi

    world(2)
    shipped = Path(ruyi.__file__).parent / "assets" / "ruyi-tiny-pans"
    plan = PipelineSpec.from_names(shipped, strategies={"parallel": ("ulysses", {})}, device="cpu").validate()
    (strategy,) = [s for s in plan.strategies if isinstance(s, ParallelStrategy)]
    strategy.check_request(SimpleNamespace(height=80, width=80))
    with pytest.raises(ConfigError, match="25 tokens per frame"):
        ParallelStrategy().check_request(SimpleNamespace(height=80, width=80))
