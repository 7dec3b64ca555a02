"""Sweep results (JSON lines) -> the original's table layout (markdown) and a memory/time plot.

    pip install -e ".[bench]"     # matplotlib, for the plot
    python benchmarks/report.py benchmarks/results/sweep.jsonl --out benchmarks/results
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path


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


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if importlib.util.find_spec("matplotlib") is None:
        fail("benchmarks/report.py draws its plot with matplotlib, from the `bench` extra: pip install -e '.[bench]'")
    if not args.results.is_file():
        fail(f"{args.results} does not exist; run benchmarks/sweep.py first")
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if row.get("status") in ("ok", "oom")]  # failures of older sweeps are no data
    if not rows:
        fail(f"{args.results} holds no results; run benchmarks/sweep.py first")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tables.md").write_text(tables(rows))
    plot(rows, args.out / "memory_vs_time.png")
    print(tables(rows))


if __name__ == "__main__":
    main()
