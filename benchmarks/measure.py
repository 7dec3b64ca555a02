"""One benchmark job in its own process: ``python benchmarks/measure.py [hydra overrides]``.

Prints one line ``RESULT {json}``: peak GPU memory (``torch.cuda.max_memory_allocated``, as the
original's tables) per phase and overall, seconds per denoising step (mean of the steps after
warm-up) and the end-to-end time extrapolated to ``bench.report_steps`` steps.

With ``eval=on`` the job makes the whole video (``steps`` steps, decoded) instead of the timed
steps alone, judges it against the reference video of its request (``ruyi.eval.sweep``: made once,
cached) and adds ``quality`` (the metrics) and ``seconds`` (the whole call) to its result.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from benchmarks.host_load import AnonPeak  # noqa: E402
from ruyi.assembly import PipelineSpec, build  # noqa: E402
from ruyi.eval.sweep import SweepEval, notes_of  # noqa: E402
from ruyi.hydra_config import request_images  # noqa: E402

GIB = 1024**3


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else 0.0


class PhaseMeter:
    """Pipeline callback: wall time and peak GPU memory of each phase of the real ``__call__``
    (encode / denoise / decode), and the time of each denoising step (user steps)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float] = {}
        self.step_times: list[float] = []
        self._began = self._step_began = 0.0

    def on_phase_begin(self, name: str) -> None:
        _sync()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._began = time.perf_counter()

    def on_phase_end(self, name: str) -> None:
        _sync()
        self.seconds[name] = time.perf_counter() - self._began
        self.peak_gib[name] = _peak_gib()

    def on_step_begin(self, state) -> None:
        if state.call == 0 or self._step_began == 0.0:
            _sync()
            self._step_began = time.perf_counter()

    def on_step_end(self, state) -> None:
        if state.step_done:
            _sync()
            now = time.perf_counter()
            self.step_times.append(now - self._step_began)
            self._step_began = now


def _host_peak_gib() -> float:
    """Peak resident host memory of this process (pinned weights and parked activations included)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _attention_note(plan) -> str | None:
    """What ``attention=auto`` chose on the run's device (kernel order and head-dim padding)."""
    from ruyi.models.attention.auto import AUTO_PAD, AttentionBackend, AutoAttention

    for strategy in plan.strategies:
        if isinstance(strategy, AutoAttention):
            pads = ", ".join(f"{k} to a multiple of {v}" for k, v in AUTO_PAD.items()) if strategy.auto_pad else "off"
            return f"auto: {strategy.plan(plan.device).label}; head-dim padding: {pads}"
        if isinstance(strategy, AttentionBackend):
            return repr(strategy)
    return None


def measure(cfg, *, judge: SweepEval | None = None, overrides: list[str] | None = None) -> dict:
    plan = PipelineSpec.from_config(cfg).validate()
    began = time.perf_counter()
    pipe = build(plan, weights=cfg.bench.weights)
    load_s, host_load_gib = time.perf_counter() - began, _host_peak_gib()  # the loader's peak
    weights = sum(t.numel() * t.element_size() for m in pipe.modules.values() for t in [*m.parameters(), *m.buffers()])
    bench = cfg.bench
    # eval=on judges the real video: every step of it, decoded; the timed steps follow the warm-up
    steps = int(cfg.steps) if judge else bench.warmup_steps + bench.measured_steps
    warmup = min(bench.warmup_steps, steps - 1)
    meter = PhaseMeter()
    latents_only = not bench.decode and judge is None
    start, end = request_images(cfg)  # as the reference is made (the size is fixed by video_size)
    video = pipe(
        start, end, frames=cfg.frames, base_resolution=cfg.base_resolution,
        video_size=list(cfg.video_size), steps=steps, cfg=cfg.cfg, seed=cfg.seed, camera=cfg.camera,
        motion=str(cfg.motion), callbacks=[meter], progress=False, output_latents=latents_only,
    )  # fmt: skip
    measured = meter.step_times[warmup:]
    per_step = sum(measured) / len(measured)
    notes = notes_of(pipe)
    skipped = {name: note["skipped_steps"] for name, note in notes.items()}
    t_encode, t_decode = meter.seconds.get("encode", 0.0), meter.seconds.get("decode", 0.0)
    result = {
        "status": "ok",
        "denoise_s": meter.seconds["denoise"],
        "plugin_skipped_steps": skipped,
        "step_s": per_step,
        "step_times_s": meter.step_times,
        "encode_s": t_encode,
        "decode_s": t_decode,
        "total_s_extrapolated": t_encode + per_step * bench.report_steps + t_decode,
        "peak_gib": max(meter.peak_gib.values()),
        "peak_denoise_gib": meter.peak_gib["denoise"],
        "peak_decode_gib": meter.peak_gib.get("decode", 0.0),
        "peak_encode_gib": meter.peak_gib["encode"],
        "weights_gib": weights / GIB,  # what offload=group keeps pinned in host memory
        "host_peak_gib": _host_peak_gib(),
        "host_load_peak_gib": host_load_gib,  # after build: loading (and attaching) alone
        "load_s": load_s,  # build: weights read (bench.weights=checkpoint) or made, strategies attached
        "weights": str(cfg.bench.weights),
        "attention": _attention_note(plan),
        "plan": {"offload": repr(plan.offload), "skip_steps": plan.spec.skip_steps,
                 "vae_tile_size": plan.spec.vae_tile_size, "strategies": [repr(s) for s in plan.strategies]},
    }
    if judge is not None:
        seconds = sum(meter.seconds.values())
        del pipe  # the reference may need the memory
        peak = result["peak_gib"] if torch.cuda.is_available() else None
        line = judge.record(cfg, video, seconds=seconds, peak_gib=peak, overrides=overrides, notes=notes)
        result.update(quality=line["metrics"], seconds=seconds, steps=steps, notes=notes)
    return result


def main(overrides: list[str]) -> int:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="benchmark", overrides=overrides)
    judge = SweepEval.from_config(cfg, config_name="benchmark", config_dir=REPO / "configs")
    with AnonPeak() as anon:  # the peak of what the OS cannot drop (RSS counts mapped file pages too)
        try:
            result = measure(cfg, judge=judge, overrides=overrides)
        except torch.OutOfMemoryError as err:
            result = {"status": "oom", "error": str(err).splitlines()[0][:300]}
    result["host_peak_anon_gib"] = anon.peak_kib / 1024**2
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result.update(device=device, overrides=overrides)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if not torch.cuda.is_available() and "device=cpu" not in sys.argv[1:]:  # device=cpu: a dry run of a GPU job
        sys.exit("error: benchmarks/measure.py measures GPU memory and needs a CUDA GPU (device=cpu for a dry run)")
    sys.exit(main(sys.argv[1:]))
