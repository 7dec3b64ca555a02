"""The benchmark job times the real pipeline call through phase callbacks (CPU, tiny preset)."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.measure import measure  # noqa: E402


def test_measure_times_every_phase_and_user_step():
    overrides = ["model=ruyi_tiny", "device=cpu", "dtype=float32", "frames=8", "bench.resolution=64",
                 "bench.weights=random", "sampler=pndm", "bench.warmup_steps=2", "bench.measured_steps=2"]  # fmt: skip
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="benchmark", overrides=overrides)
    result = measure(cfg)
    # PNDM evaluates the model 13 times for 4 steps: the meter still counts 4 user steps
    assert len(result["step_times_s"]) == 4
    assert result["encode_s"] > 0 and result["denoise_s"] > 0 and result["decode_s"] > 0
    assert result["denoise_s"] >= sum(result["step_times_s"]) * 0.99
