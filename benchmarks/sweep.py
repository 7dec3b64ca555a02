"""Memory/time sweep driven by Hydra multirun; every job measured in a fresh process.

    python benchmarks/sweep.py -m frames=24,72,120 offload=none,group precision=bf16,fp8_strong \
        skip_steps=0,5 bench.resolution=512

Each job runs ``benchmarks/measure.py`` with its overrides in a subprocess (one job's CUDA cache
cannot skew the next one's peak) and appends its result to ``bench.results`` (JSON lines). An
out-of-memory job is a data point (``---`` in the tables, as the original's); a job that failed or
timed out is recorded in ``bench.failures`` instead, never as a data row, and the sweep goes on.
Without a CUDA GPU the sweep refuses to start (exit 2) and writes nothing. ``benchmarks/report.py``
turns the results into the original's table layout and a plot.

With ``eval=on`` each job also makes its whole video and judges it against the reference video of
its request (``ruyi/eval/sweep.py``): the result gets ``quality`` beside its time and memory, and
``eval.out`` a line. At the real shape with random weights (``bench.weights=random``) the numbers
compare noise with noise; the report shows "random weights" instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
DATA_STATUSES = ("ok", "oom")  # what a table cell shows; anything else is a failure to look into


def run_job(overrides: list[str], timeout_s: int) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "measure.py"), *overrides]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout_s} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    status = "oom" if any("out of memory" in t.lower() for t in tail) else "failed"
    return {"status": status, "error": " | ".join(tail)[-500:], "returncode": proc.returncode}


def record(result: dict, *, results: Path, failures: Path) -> Path:
    """Append ``result`` to the results (a measurement or an OOM) or to the failures file."""
    path = results if result.get("status") in DATA_STATUSES else failures
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(result) + "\n")
    return path


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@hydra.main(version_base=None, config_path="../configs", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("hydra.")]
    result = run_job(overrides, int(cfg.bench.timeout_s))
    result.update(
        overrides=overrides, frames=int(cfg.frames), resolution=int(cfg.bench.resolution),
        offload=HydraConfig.get().runtime.choices["offload"], precision=HydraConfig.get().runtime.choices["precision"],
        memory=HydraConfig.get().runtime.choices.get("memory"),
        skip_steps=int(cfg.skip_steps), vae_tile_size=int(cfg.vae_tile_size), weights=cfg.bench.weights, when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip
    record(result, results=Path(to_absolute_path(cfg.bench.results)), failures=Path(to_absolute_path(cfg.bench.failures)))
    status = result["status"]
    summary = f"{result['peak_gib']:.1f} GiB, {result['step_s']:.2f} s/step" if status == "ok" else result.get("error", "")
    psnr = (result.get("quality") or {}).get("psnr")  # eval=on
    if psnr is not None:
        summary += ", quality: random weights" if cfg.bench.weights == "random" else f", psnr {psnr:.2f} dB"
    print(f"[{status}] {' '.join(overrides)}: {summary}", flush=True)


if __name__ == "__main__":
    from ruyi.overrides import exit_on_bad_overrides

    exit_on_bad_overrides(sys.argv[1:], config_dir=REPO / "configs", config_name="benchmark")
    from ruyi.multirun import prepare

    prepare(sys.argv[1:], config_dir=REPO / "configs", config_name="benchmark", videos=False)  # a bad eval.* block
    if not cuda_available():
        print("error: benchmarks/sweep.py measures GPU memory and needs a CUDA GPU; none is visible, "
              "so nothing was run or recorded", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    main()
