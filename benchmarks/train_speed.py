"""Training speed and peak memory of one configuration, in its own process.

    python benchmarks/train_speed.py [--random-weights] [--steps 6] [--warmup 2] [--jsonl FILE] [train.yaml overrides]
    python benchmarks/train_speed.py --report FILE      # the markdown table of every recorded job

Runs ``scripts/train.py``'s own assembly (``ruyi.training.run.build_run``) for ``warmup + steps``
optimizer steps and times them through a Lightning callback: the step time (batch already
loaded; synchronised on the GPU), the wall time between steps (data loading included), samples
per second, and the peak memory (``torch.cuda.max_memory_allocated`` after the warm-up reset on a
GPU, the process's peak RSS on the CPU). ``--random-weights`` builds the model at its preset's
real shape with random weights (the assembly's ``weights="random"``), so the 7B needs no download. An
out-of-memory step is recorded as ``oom``.

    # tiny model, CPU
    python benchmarks/train_speed.py model=ruyi_tiny_pans finetune=full --random-weights
    # Ruyi-Mini-7B LoRA, 768 x 768 x 48 frames, bf16, activation checkpointing, one GPU
    python benchmarks/train_speed.py --random-weights model=ruyi_mini_7b dtype=bfloat16 finetune=lora \\
        gradient_checkpointing=true data.frames=48 data.height=768 data.width=768 batch_size=1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

GIB = 1024**3
QUIET = ["trainer.logger=none", "trainer.checkpoint_every_n_steps=null", "trainer.progress_refresh_rate=0",
         "+trainer.enable_model_summary=false", "warmup_steps=0"]  # fmt: skip


def step_timer(warmup: int):
    import lightning as L

    class StepTimer(L.Callback):
        """Step and between-step wall times; the GPU peak from after the warm-up on."""

        def __init__(self) -> None:
            self.step_s: list[float] = []
            self.wall_s: list[float] = []
            self._begin = self._last_end = 0.0

        def _sync(self) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self._sync()
            if batch_idx == warmup and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            self._begin = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self._sync()
            now = time.perf_counter()
            if batch_idx >= warmup:
                self.step_s.append(now - self._begin)
                self.wall_s.append(now - self._last_end)
            self._last_end = now

    return StepTimer()


def measure(overrides: list[str], *, steps: int, warmup: int, random_weights: bool) -> dict:
    from hydra import compose, initialize_config_dir

    from ruyi.training.run import build_run

    out = Path(tempfile.mkdtemp(prefix="ruyi-train-speed-"))
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        # random weights are made where they run (one GPU here): no 7B round trip through CPU RAM
        made_on = ["device=auto"] if random_weights else []
        cfg = compose("train", overrides=[f"output_dir={out / 'run'}", *QUIET, *made_on, f"trainer.max_steps={warmup + steps}", *overrides])
    job = build_run(cfg, weights="random" if random_weights else "checkpoint")
    timer = step_timer(warmup)
    job.trainer.callbacks.append(timer)
    try:
        job.fit()
    except torch.OutOfMemoryError as err:
        return {"status": "oom", "error": str(err).splitlines()[0][:200]}
    step, wall = statistics.median(timer.step_s), statistics.median(timer.wall_s)
    gpu = torch.cuda.is_available()
    return {
        "status": "ok", "step_s": step, "steps_per_s": 1 / step, "steps_per_s_with_data": 1 / wall,
        "samples_per_s": int(cfg.batch_size) / wall,
        "peak_gib": torch.cuda.max_memory_allocated() / GIB if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "peak_kind": "GPU allocated" if gpu else "CPU RSS",
        "trainable": sum(p.numel() for p in job.module.parameters() if p.requires_grad),
        "step_times_s": timer.step_s,
    }  # fmt: skip


def report(path: Path) -> str:
    lines = ["| device | job | steps/s | steps/s incl. data | samples/s | peak GiB |", "|---|---|---|---|---|---|"]
    for row in map(json.loads, path.read_text().splitlines()):
        job = " ".join(o for o in row["overrides"] if not o.startswith(("trainer.", "+trainer.")))
        if row["status"] != "ok":
            lines.append(f"| {row['device']} | {job} | --- | --- | --- | {row['status']} |")
            continue
        lines.append(
            f"| {row['device']} | {job} | {row['steps_per_s']:.2f} | {row['steps_per_s_with_data']:.2f} | "
            f"{row['samples_per_s']:.1f} | {row['peak_gib']:.2f} ({row['peak_kind']}) |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--jsonl", type=Path, default=None, help="append the result here")
    parser.add_argument("--report", type=Path, default=None, help="print the table of a results file and exit")
    args, overrides = parser.parse_known_args()
    if args.report:
        print(report(args.report))
        return 0
    result = measure(overrides, steps=args.steps, warmup=args.warmup, random_weights=args.random_weights)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()} ({torch.get_num_threads()} threads)"
    result.update(device=device, overrides=overrides, random_weights=args.random_weights)
    print("RESULT " + json.dumps(result), flush=True)
    if args.jsonl:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with args.jsonl.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
