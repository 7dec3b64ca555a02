"""Where the GPU memory of one denoising step goes: a timeline and the tensors alive at its peak.

    python benchmarks/memory_profile.py bench.resolution=768 frames=120 offload=group skip_steps=1 \
        vae_tile_size=384 memory=combo --out $OUT/profile_768

Same Hydra overrides as ``benchmarks/measure.py`` (``configs/benchmark.yaml``: the real 7B shape,
random weights). The pipeline is built and called for two steps without decoding; the second (one
transformer call with classifier-free guidance, and the sampler's update) runs under
``torch.cuda.memory._record_memory_history``. The recorded trace is replayed to find the moment of
the peak; the allocations alive then are grouped by the line that made them (the innermost frame
outside torch) and printed largest first, with the bytes already allocated when the step began
(weights that stay, latents, conditioning) as one row. ``--out`` keeps the snapshot (open it at
https://pytorch.org/memory_viz), the timeline and the table as JSON. At 768 x 768 x 120 frames it
takes about 1.5-2 min on an H100-class GPU, most of it building the random 7B weights and encoding.

``--simulate`` needs no GPU: the transformer call runs on the meta device under
``ruyi.memory.estimate`` (activations only: weights, allocator rounding and cuBLAS workspaces are
not in it) and prints the same table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch

GIB = 1024**3


# -- trace analysis (pure Python: tested on the CPU with a hand-made trace) ----------------------------
def site_of(frames: Iterable[dict]) -> str:
    """``file:line function`` of the innermost frame outside torch (frames innermost first)."""
    frames = list(frames)
    for frame in frames:
        name = frame.get("filename", "?")
        if "/torch/" not in name and not name.startswith("<"):
            return f"{'/'.join(name.split('/')[-2:])}:{frame.get('line', '?')} {frame.get('name', '?')}"
    return "(no python frame outside torch)" if frames else "(no stack)"


def replay(trace: list[dict], baseline: int = 0) -> dict:
    """Allocated bytes over the trace's events, the peak, and the live blocks at the peak.

    ``alloc`` adds a block, ``free_completed`` takes it away (a block freed on one stream but still
    used by another counts until then, as ``memory_allocated`` does). ``baseline``: bytes allocated
    before recording began.
    """
    live: dict[int, tuple[int, str]] = {}
    current = peak = baseline
    peak_live: dict[int, tuple[int, str]] = {}
    peak_index, timeline = -1, []
    for index, event in enumerate(trace):
        action = event.get("action")
        if action == "alloc":
            live[event["addr"]] = (event["size"], site_of(event.get("frames", ())))
            current += event["size"]
            if current > peak:
                peak, peak_index, peak_live = current, index, dict(live)
        elif action == "free_completed" and event["addr"] in live:
            current -= live.pop(event["addr"])[0]
        else:
            continue
        timeline.append(current)
    return {
        "peak": peak,
        "peak_index": peak_index,
        "baseline": baseline,
        "live_at_peak": peak_live,
        "timeline": timeline,
    }


def top_sites(rows: list[tuple[str, int, int]], top: int) -> list[tuple[str, int, int]]:
    """The ``top`` largest (site, bytes, count) rows, the rest summed into one."""
    rows = sorted(rows, key=lambda r: -r[1])
    rest = rows[top:]
    if rest:
        return rows[:top] + [(f"({len(rest)} other sites)", sum(r[1] for r in rest), sum(r[2] for r in rest))]
    return rows


def peak_table(live: dict[int, tuple[int, str]], baseline: int, top: int) -> list[tuple[str, int, int]]:
    """(site, bytes, count) of the blocks alive at the peak, largest site first; the baseline first."""
    sites: dict[str, list[int]] = {}
    for size, site in live.values():
        entry = sites.setdefault(site, [0, 0])
        entry[0] += size
        entry[1] += 1
    rows = [(s, b, n) for s, (b, n) in sites.items()]
    return [
        ("(allocated before the step: weights kept, latents, conditioning)", baseline, 0),
        *top_sites(rows, top),
    ]


def print_table(title: str, rows: list[tuple[str, int, int]], peak: int) -> None:
    print(f"\n{title}\npeak {peak / GIB:.2f} GiB\n")
    print(f"| {'GiB':>6} | {'share':>5} | {'blocks':>6} | allocated at |")
    print("|---:|---:|---:|---|")
    for site, size, count in rows:
        print(f"| {size / GIB:6.2f} | {size / max(peak, 1):5.0%} | {count:6d} | {site} |")


def print_timeline(timeline: list[int], points: int = 24) -> None:
    """The allocated bytes at ``points`` evenly spaced events, as a bar per row."""
    if not timeline:
        return
    top = max(timeline)
    print("\ntimeline of the step (allocated GiB at evenly spaced allocation events)")
    for i in range(points):
        value = timeline[min(len(timeline) - 1, i * len(timeline) // points)]
        print(f"{i * 100 // points:3d}% {value / GIB:6.2f} {'#' * round(40 * value / top)}")


# -- the GPU run ----------------------------------------------------------------------------------------
class StepRecorder:
    """Pipeline callback: records the allocations of model call ``call`` (0-based) of the loop."""

    def __init__(self, call: int = 1, max_entries: int = 2_000_000) -> None:
        self.call, self.max_entries = call, max_entries
        self.snapshot: dict | None = None
        self.baseline = 0
        self.seconds = 0.0

    def on_step_begin(self, state) -> None:
        if state.call != self.call:
            return
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.baseline = torch.cuda.memory_allocated()
        torch.cuda.memory._record_memory_history(max_entries=self.max_entries, stacks="python")
        self._began = time.perf_counter()

    def on_step_end(self, state) -> None:
        if state.call != self.call:
            return
        torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._began
        self.snapshot = torch.cuda.memory._snapshot()
        self.max_allocated = torch.cuda.max_memory_allocated()
        torch.cuda.memory._record_memory_history(enabled=None)


def profile_gpu(cfg, top: int, out: Path | None, warmup: int) -> dict:
    from ruyi.assembly import PipelineSpec, build
    from ruyi.io import procedural_image

    pipe = build(PipelineSpec.from_config(cfg), weights=cfg.bench.weights)
    recorder = StepRecorder(call=warmup)
    pipe(
        procedural_image(640, 640), None, frames=cfg.frames, video_size=list(cfg.video_size), steps=warmup + 1, cfg=cfg.cfg,
        seed=cfg.seed, callbacks=[recorder], progress=False, output_latents=True,
    )  # fmt: skip
    device = torch.cuda.current_device()
    trace = recorder.snapshot["device_traces"][device]
    result = replay(trace, recorder.baseline)
    rows = peak_table(result["live_at_peak"], recorder.baseline, top)
    print(f"step: {recorder.seconds:.2f} s (recording slows it); max_memory_allocated {recorder.max_allocated / GIB:.2f} GiB; "
          f"{len(trace)} trace events")  # fmt: skip
    print_table(
        f"GPU memory at the peak of one denoising step ({torch.cuda.get_device_name()})", rows, result["peak"]
    )
    print_timeline(result["timeline"])
    if out is not None:
        import pickle

        with (out / "snapshot.pickle").open("wb") as f:
            pickle.dump(recorder.snapshot, f)
    return {"peak_gib": result["peak"] / GIB, "max_allocated_gib": recorder.max_allocated / GIB, "step_s": recorder.seconds,
            "rows": rows, "timeline_gib": [t / GIB for t in result["timeline"][:: max(1, len(result["timeline"]) // 2000)]]}  # fmt: skip


def simulate(cfg, top: int) -> dict:
    """The transformer call of one step on the meta device (activations only)."""
    from types import SimpleNamespace

    from ruyi.assembly import PipelineSpec
    from ruyi.memory.estimate import ParkedSkips, live_tensors, transformer_inputs
    from ruyi.models.loading import meta_model
    from ruyi.memory.skips import park_long_skips

    # no device, so no validation (group offload's checks want CUDA): only what shapes activations
    spec = PipelineSpec.from_config(cfg)
    arch = dict(cfg.model.transformer_arch)
    cls = spec.transformer.cls
    model = meta_model(cls, {**arch, **(getattr(cls, "config_overrides", None) or {})}).to(torch.bfloat16)
    if spec.skip_steps:
        park_long_skips(model, ParkedSkips)
    # memory options attach as in a build; the VAE is not simulated (a stand-in takes its switch)
    vae = SimpleNamespace(enable_host_output=lambda: None, disable_host_output=lambda: None)
    pipe = SimpleNamespace(transformer=model, vae=vae, callbacks=[])
    for component in spec.strategies:
        if component.kind == "memory":
            component.create().apply(pipe)  # memory=auto decides on a GPU only: here it adds nothing
    batch = 2 if cfg.cfg > 1 else 1
    args, kwargs = transformer_inputs(arch, batch=batch, frames=cfg.frames, height=cfg.video_size[0],
                                      width=cfg.video_size[1], dtype=torch.bfloat16)  # fmt: skip
    with torch.no_grad(), live_tensors() as live:
        model(*args, **kwargs)
    rows = top_sites(live.peak.by_site(), top)
    print_table("SIMULATED activations at the peak of one transformer call (meta device, weights not counted)", rows,
                live.peak.peak_bytes)  # fmt: skip
    return {"peak_gib": live.peak.peak_bytes / GIB, "rows": rows, "simulated": True}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulate", action="store_true", help="no GPU: activations on the meta device")
    parser.add_argument("--top", type=int, default=15, help="allocation sites to list")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="steps before the recorded one (offload hooks trace their order in the first)",
    )
    parser.add_argument("--out", type=Path, help="folder for snapshot.pickle and profile.json")
    args, overrides = parser.parse_known_args(argv)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="benchmark", overrides=overrides)
    print(f"profile: {' '.join(overrides) or '(defaults)'}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.simulate:
        result = simulate(cfg, args.top)
    elif not torch.cuda.is_available():
        print("error: profiling GPU memory needs a CUDA GPU (or pass --simulate)", file=sys.stderr)
        return 2
    else:
        result = profile_gpu(cfg, args.top, args.out, args.warmup)
    if args.out is not None:
        result.update(overrides=overrides)
        from ruyi.files import write_text_atomic

        write_text_atomic(args.out / "profile.json", json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
