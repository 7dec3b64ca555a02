"""Sweep results (JSON lines) -> tables (markdown) and plots.

    pip install -e ".[bench]"     # matplotlib, for the plots (without it: the tables alone)
    python benchmarks/report.py benchmarks/results/sweep.jsonl --out benchmarks/results
    python benchmarks/report.py outputs/eval.jsonl --out outputs/report     # an infer.py sweep with eval=on

Two kinds of lines are read: ``benchmarks/sweep.py``'s results (peak memory and time at the real
shape, in the original's table layout; with ``eval=on`` also each job's ``quality``) and the lines
``eval=on`` appends to ``eval.out`` (seconds, peak memory and metrics of each job). Jobs of one
setting (their overrides other than the request: image, seed, camera, ...) are pooled into one
quality row beside their time and memory; the Pareto plot puts time against PSNR (marker size:
peak memory). Rows made with random weights (``bench.weights=random``) show "random weights"
instead of quality numbers: a comparison of noise with noise means nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# settings that are the request or bookkeeping, not a lever: left out of a quality row's name
NOT_A_SETTING = ("image", "end_image", "seed", "camera", "motion", "frames", "frames_rounding", "base_resolution",
                 "video_size", "device", "download", "output", "overwrite", "fps", "progress", "eval", "bench",
                 "hydra", "model.path")  # fmt: skip
RANDOM = "random weights"


def strategy(row: dict) -> str:
    """The job's own overrides minus the grid axes: e.g. ``offload=group skip_steps=1``."""
    axes = ("frames=", "bench.")
    return " ".join(o for o in row["overrides"] if not o.startswith(axes)) or "defaults"


def cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return "---" if row["status"] == "oom" else row["status"]
    minutes, seconds = divmod(round(row["total_s_extrapolated"]), 60)
    return f"{row['peak_gib'] * 1024:.0f} / {minutes}:{seconds:02d} ({row['step_s']:.2f} s/step)"


def tables(rows: list[dict]) -> str:
    by_res: dict[int, dict[tuple[int, str], dict]] = defaultdict(dict)
    for row in rows:
        by_res[row["resolution"]][(row["frames"], strategy(row))] = row  # a later run of a job wins
    out = []
    for res in sorted(by_res):
        grid = by_res[res]
        strategies = sorted({s for _, s in grid}, key=lambda s: (s != "offload=none", len(s), s))
        frames = sorted({f for f, _ in grid})
        out.append(f"### {res} x {res}, peak MiB / time for 25 steps incl. encode + decode (s per step)\n")
        out.append("| frames | " + " | ".join(strategies) + " |")
        out.append("|---" * (len(strategies) + 1) + "|")
        for f in frames:
            out.append(f"| {f} | " + " | ".join(cell(grid.get((f, s))) for s in strategies) + " |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    series: dict[tuple[int, str], list[tuple[float, float, int]]] = defaultdict(list)
    for row in rows:
        if row["status"] == "ok":
            series[(row["resolution"], strategy(row))].append((row["step_s"], row["peak_gib"], row["frames"]))
    for (res, name), points in sorted(series.items()):
        ax = axes[0] if res <= 512 else axes[1]
        points.sort(key=lambda p: p[2])
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name)
        for t, m, f in points:
            ax.annotate(str(f), (t, m), fontsize=7)
    for ax, title in zip(axes, ("<= 512", "> 512")):
        ax.set(xlabel="seconds per denoising step", ylabel="peak GPU memory (GiB)", title=f"resolution {title}")
        ax.axhline(24, color="grey", linestyle=":", linewidth=1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- quality (eval=on) -----------------------------------------------------------------------------
def setting(overrides: list[str]) -> str:
    """A job's overrides minus its request and bookkeeping: ``sampler=euler steps=5``."""

    def is_setting(item: str) -> bool:
        key = item.split("=", 1)[0].lstrip("+~")
        return not any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in NOT_A_SETTING)

    return " ".join(o for o in overrides if is_setting(o)) or "defaults"


def judged(row: dict) -> dict | None:
    """An eval=on line, or a sweep result with ``quality``, in one shape; None for other rows."""
    metrics = row.get("metrics") if "metrics" in row else row.get("quality")
    if metrics is None or row.get("status", "ok") != "ok":
        return None
    shape = row.get("shape") or [row.get("frames"), row.get("resolution"), row.get("resolution")]
    seconds = row.get("seconds", row.get("total_s_extrapolated"))
    return {"setting": setting(row.get("overrides", [])), "shape": tuple(shape), "seconds": seconds,
            "cpu_seconds": row.get("cpu_seconds"), "peak_gib": row.get("peak_gib"), "weights": row.get("weights", "checkpoint"), "metrics": metrics,
            "notes": row.get("notes") or {}, "steps": row.get("steps")}  # fmt: skip


def pool(rows: list[dict]) -> list[dict]:
    """One entry per (setting, video shape), in first-seen order, pooling its jobs."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        entry = judged(row)
        if entry is not None:
            groups.setdefault((entry["setting"], entry["shape"]), []).append(entry)
    return [_pooled(name, shape, entries) for (name, shape), entries in groups.items()]


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def pooled_psnr(values: list[float], cap: float = 100.0) -> float | None:
    """The PSNR of the mean squared error over all videos (8-bit): a mean of per-video PSNRs would let
    one identical video (the 100 dB cap) hide a broken one."""
    if not values:
        return None
    mse = sum(0.0 if v >= cap else 255.0**2 / 10 ** (v / 10) for v in values) / len(values)
    return cap if mse == 0 else min(cap, 10 * math.log10(255.0**2 / mse))


def _pooled(name: str, shape: tuple, entries: list[dict]) -> dict:
    metric = lambda key: [e["metrics"].get(key) for e in entries]  # noqa: E731
    psnr = [v for v in metric("psnr") if v is not None]
    judged_cams = [v for v in metric("camera_correct") if v is not None]
    skipped = [n.get("skipped_steps") for e in entries for n in e["notes"].values() if isinstance(n, dict)]
    peaks = [e["peak_gib"] for e in entries if e["peak_gib"] is not None]
    return {
        "setting": name, "shape": shape, "videos": len(entries),
        "random": any(e["weights"] == "random" for e in entries),
        "psnr": pooled_psnr(psnr), "psnr_min": min(psnr) if psnr else None, "identical": sum(v >= 100.0 for v in psnr),
        "ssim": _mean(metric("ssim")),
        "camera_right": sum(judged_cams), "camera_judged": len(judged_cams),
        "motion": _mean(metric("motion_px_per_frame")), "flicker": _mean(metric("flicker")),
        "seconds": _mean([e["seconds"] for e in entries]), "cpu_seconds": _mean([e["cpu_seconds"] for e in entries]),
        "peak_gib": max(peaks) if peaks else None,
        "skipped_steps": _mean(skipped), "steps": _mean([e["steps"] for e in entries]),
    }  # fmt: skip


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def quality_cells(row: dict) -> list[str]:
    """PSNR (pooled, worst), SSIM, camera right, motion, flicker: or "random weights"."""
    if row["random"]:
        return [RANDOM] * 5
    if row["psnr"] is None:
        psnr = "-"
    elif row["psnr_min"] >= 100.0:
        psnr = "identical"
    else:
        psnr = f"{row['psnr']:.1f} ({row['psnr_min']:.1f})"
    judged_cams = row["camera_judged"]
    camera = f"{100 * row['camera_right'] / judged_cams:.0f} % ({row['camera_right']}/{judged_cams})" if judged_cams else "-"
    return [psnr, _num(row["ssim"], ".4f"), camera, _num(row["motion"], ".2f"), _num(row["flicker"], ".2f")]


def quality_table(rows: list[dict], *, not_run: dict[str, str] | None = None) -> str:
    """Markdown: one row per setting with its quality beside its time and memory. ``not_run``:
    {group: overrides} shown as "GPU only: not measured here"."""
    pooled = pool(rows)
    shapes = sorted({p["shape"] for p in pooled}, key=str)
    with_shape = len(shapes) > 1
    with_cpu = any(p["cpu_seconds"] is not None for p in pooled)
    head = ["setting", *(["frames x H x W"] if with_shape else []), "videos", "PSNR dB (worst)", "SSIM", "camera right",
            "motion px/frame", "flicker", "s/video", *(["CPU s/video"] if with_cpu else []), "peak GiB", "notes"]  # fmt: skip
    out = []
    if shapes and not with_shape:
        f, h, w = shapes[0]
        out.append(f"{f} frames of {w}x{h}. PSNR (of the mean squared error over the videos; worst video in brackets) "
                   "and SSIM against the reference video of the same request; 100 dB = identical frames\n")  # fmt: skip
    out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for p in pooled:
        notes = []
        if 0 < p["identical"] < p["videos"] and not p["random"]:
            notes.append(f"{p['identical']}/{p['videos']} identical")
        if p["skipped_steps"] is not None:
            of = f" of {p['steps']:.0f}" if p["steps"] else ""
            notes.append(f"skips {p['skipped_steps']:.1f}{of} steps")
        notes = "; ".join(notes)
        shape = ["x".join(str(v) for v in p["shape"])] if with_shape else []
        cpu = [_num(p["cpu_seconds"], ".2f")] if with_cpu else []
        cells = [f"`{p['setting']}`", *shape, str(p["videos"]), *quality_cells(p), _num(p["seconds"], ".2f"), *cpu,
                 _num(p["peak_gib"], ".2f"), notes]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    for name, overrides in (not_run or {}).items():
        blank = [""] * (len(head) - 3)
        out.append("| " + " | ".join([f"`{overrides}`", *blank, "GPU only: not measured here", ""]) + " |")
    return "\n".join(out)


def pareto_plot(rows: list[dict], path: Path) -> bool:
    """Time against PSNR, marker size = peak memory; the settings no other beats on both joined.
    False when no row has both numbers (random weights are not plotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in pool(rows) if not p["random"] and p["psnr"] is not None and p["seconds"] is not None]
    if not points:
        return False
    # CPU time where every row has it (steadier than wall time on a shared machine)
    clock = "cpu_seconds" if all(p["cpu_seconds"] is not None for p in points) else "seconds"
    fig, ax = plt.subplots(figsize=(9, 6))
    sizes = [40 if p["peak_gib"] is None else 20 + 30 * p["peak_gib"] for p in points]
    ax.scatter([p[clock] for p in points], [p["psnr"] for p in points], s=sizes, alpha=0.6)
    identical = [p for p in points if p["psnr_min"] >= 100.0]
    for p in points:
        if p not in identical:
            ax.annotate(p["setting"], (p[clock], p["psnr"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    if identical:  # one label for the cluster at the cap
        first = min(identical, key=lambda p: p[clock])
        ax.annotate(f"{len(identical)} settings identical to the reference", (first[clock], 100.0), fontsize=7,
                    xytext=(3, -10), textcoords="offset points")  # fmt: skip
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[clock], -p["psnr"])):
        if p["psnr"] > best:
            front.append(p)
            best = p["psnr"]
    ax.plot([p[clock] for p in front], [p["psnr"] for p in front], "r--", linewidth=1, label="Pareto front")
    on_cpu = all(p["peak_gib"] is None for p in points)
    memory = "all alike: peak GPU memory is not measured on the CPU" if on_cpu else "peak GPU memory"
    ax.set(xlabel="CPU seconds per video" if clock == "cpu_seconds" else "seconds per video",
           ylabel="PSNR vs the reference (dB, 100 = identical)",
           title=f"time vs fidelity (marker size: {memory})")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="benchmarks/sweep.py's results, or an eval=on eval.out")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if not args.results.is_file():
        fail(f"{args.results} does not exist; run benchmarks/sweep.py (or a sweep with eval=on) first")
    rows = read_rows(args.results)
    measured = [row for row in rows if row.get("status") in ("ok", "oom")]  # failures of older sweeps are no data
    if not measured and not pool(rows):
        fail(f"{args.results} holds no results; run benchmarks/sweep.py (or a sweep with eval=on) first")
    text = "\n".join(part for part in (tables(measured) if measured else "", quality_table(rows) if pool(rows) else "") if part)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tables.md").write_text(text + "\n")
    print(text)
    if importlib.util.find_spec("matplotlib") is None:
        print("note: no plots: they are drawn with matplotlib, from the `bench` extra (pip install -e '.[bench]')",
              file=sys.stderr)  # fmt: skip
        return
    if measured:
        plot(measured, args.out / "memory_vs_time.png")
    if pareto_plot(rows, args.out / "pareto.png"):
        print(f"wrote {args.out / 'pareto.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
