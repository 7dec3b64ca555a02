"""Hydra's submitit launcher (the ``cluster`` extra): a multirun of scripts/infer.py whose jobs each
run in their own fresh processes, here two jobs of two ranks each (``tasks_per_node=2``,
``parallel=ulysses``), which set up their ranks from submitit's environment as Slurm jobs do."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ruyi.io import read_mp4

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def launcher_installed():
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        reason = "hydra-submitit-launcher is not installed (pip install -e '.[cluster]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI installs the test extra, which includes it: {reason}")
        pytest.skip(reason)


def test_two_job_multirun_through_submitit_local(fixture_dir, tmp_path):
    cmd = [
        sys.executable, str(REPO / "scripts" / "infer.py"), "--multirun", "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "parallel=ulysses", "seed=1,2", "model=ruyi_tiny", f"model.path={fixture_dir}", f"image={fixture_dir / 'start.png'}",
        "device=cpu", "video_size=[64,64]", "frames=8", "steps=2", "progress=false",
        f"output={tmp_path}/x_${{hydra:job.num}}.mp4",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(p.read_text() for p in (tmp_path / "sweep").rglob("*.err")) if done.returncode else ""
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{logs[-3000:]}"
    videos = [read_mp4(tmp_path / f"x_{num}.mp4")[0] for num in (0, 1)]
    assert all(v.shape == (8, 64, 64, 3) for v in videos)
    assert not np.array_equal(videos[0], videos[1])  # seed 1 and seed 2: each job wrote its own
    assert sorted(p.name for p in tmp_path.glob("x_*")) == ["x_0.mp4", "x_1.mp4"]
