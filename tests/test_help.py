"""``--help`` of the entry points lists their own groups and explains each key from the YAML comments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _help(script: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_infer_help_lists_its_groups_only_and_explains_keys():
    text = _help("infer.py")
    groups = {line.split()[0] for line in text.split("groups")[1].split("keys")[0].splitlines()[1:]
              if line.startswith("  ") and not line.startswith("   ")}  # fmt: skip
    assert {"model", "sampler", "offload", "precision", "attention", "memory", "plugin"} <= groups
    assert not groups & {"finetune", "trainer", "data", "metric", "experiment"}
    assert "*ruyi_tiny_pans" in text  # the default marked
    camera = next(line for line in text.splitlines() if line.startswith("  camera "))
    assert "static | left | right | up | down | zoom_in | zoom_out | auto (the rows of ruyi-tiny-pans)" in camera
    assert "is powered by Hydra" not in text
