"""Compiled kernels are kept on disk by ``compile=regional|auto``: a second process at the same shape
loads them (torch's FX-graph cache hits), a corrupt cache is compiled again (never fatal), and
``python -m ruyi cache clear`` removes only ruyi's own folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ruyi.compile_cache import MARKER

SCRIPT = r"""
import json, sys, torch
from torch._dynamo.utils import counters
from ruyi.compile import RegionalCompile
class Block(torch.nn.Module):  # dynamo leaves a bare torch.nn.Sequential uncompiled
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)
    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))
torch.manual_seed(0)
block = Block()
x = torch.randn(4, 16)
eager = block(x)
RegionalCompile().compile_module(block)
out = block(x)
print(json.dumps({"hits": counters["inductor"]["fxgraph_cache_hit"], "misses": counters["inductor"]["fxgraph_cache_miss"],
                  "max_diff": (out - eager).abs().max().item()}))
"""


def _run(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(RUYI_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="inductor's CPU backend is tested on Linux")
def test_second_process_loads_the_kernels_and_a_corrupt_cache_is_rebuilt(tmp_path):
    first = _run(tmp_path)
    folder = tmp_path / "cache" / "torch-compile"
    assert (folder / MARKER).is_file() and first["misses"] >= 1 and first["max_diff"] < 1e-5
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != MARKER]
    assert files, "nothing was written to the compile cache"

    second = _run(tmp_path)
    assert second["hits"] >= 1 and second["misses"] == 0 and second["max_diff"] < 1e-5

    for path in files:  # every cached file replaced by garbage
        path.write_bytes(b"\x00not a cache entry")
    third = _run(tmp_path)
    assert third["max_diff"] < 1e-5


def test_cache_clear_removes_only_ruyis_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("RUYI_CACHE_DIR", str(tmp_path / "r"))
    ours = tmp_path / "r" / "torch-compile"
    ours.mkdir(parents=True)
    (ours / MARKER).touch()
    (ours / "kernel.py").write_text("x")
    cli = [sys.executable, "-m", "ruyi", "cache"]
    env = {**os.environ}
    shown = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and str(ours) in shown.stdout
    cleared = subprocess.run([*cli, "clear"], env=env, capture_output=True, text=True)
    assert cleared.returncode == 0 and not ours.exists()

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    refused = subprocess.run([*cli, "clear"], env={**env, "TORCHINDUCTOR_CACHE_DIR": str(theirs)},
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "not made by ruyi" in refused.stdout and (theirs / "keep.txt").is_file()
