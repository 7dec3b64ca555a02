"""Measure the rows of ``memory=auto``'s rule table (``ruyi/memory/rules.py``) on this GPU.

    python benchmarks/memory_rows.py --rules none,group_skip,group_lean,none_lean --sizes 768,512 --out $OUT

Each (rule, size) is one ``benchmarks/measure.py`` job in a fresh process (as ``sweep.py`` runs
them): the full pipeline at the real 7B shape with random weights, ``--frames`` frames, one
warm-up and ``--steps`` timed steps. Prints peak GiB (overall and per phase), s/step and its ratio
to ``none`` at the same size, the weights' bytes (what streaming keeps pinned in host memory) and
the process's peak host RAM; writes every job's JSON to ``--out/memory_rows.jsonl`` and the
measured rules, ready to paste into ``RULES``, to ``--out/rules.py.txt``. Put ``none`` first: the
ratios need it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.sweep import run_job
from ruyi.files import write_text_atomic
from ruyi.memory.rules import RULES, Rule


def rule_overrides(rule: Rule) -> list[str]:
    """Hydra overrides that select what ``rule`` describes."""
    overrides = [
        f"offload={rule.offload}",
        f"skip_steps={rule.skip_steps}",
        f"vae_tile_size={rule.vae_tile_size}",
        *(f"offload.{key}={str(value).lower()}" for key, value in rule.offload_options.items()),
    ]
    if rule.memory:
        overrides += ["memory=combo", f"memory.use=[{','.join(rule.memory)}]"]
        for name, options in rule.memory_options.items():
            if name in rule.memory:
                overrides += [f"+memory.options.{name}.{key}={value}" for key, value in options.items()]
    return overrides


def rules_literal(rows: list[dict], device: str) -> str:
    """``Rule(...)`` entries with the measured peaks and ratios (settings copied from RULES)."""
    by_rule: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("ratio") is not None:
            by_rule.setdefault(row["rule"], []).append(row)
    lines = []
    for rule in RULES:
        measured = by_rule.get(rule.name)
        if not measured:
            continue
        peaks = ", ".join(f"({r['size']}, {r['frames']}): {r['peak_gib']:.2f}" for r in measured)
        ratios = ", ".join(f"({r['size']}, {r['frames']}): {r['ratio']:.3f}" for r in measured)
        hosts = ", ".join(f"({r['size']}, {r['frames']}): {r['host_peak_gib']:.2f}" for r in measured)
        lines.append(
            f"    Rule(\n        {rule.name!r}, {rule.offload!r}, skip_steps={rule.skip_steps}, "
            f"vae_tile_size={rule.vae_tile_size}, memory={rule.memory!r}, memory_options={dict(rule.memory_options)!r},\n"
            f"        offload_options={dict(rule.offload_options)!r},\n"
            f"        peak_gib={{{peaks}}},\n        step_ratio={{{ratios}}},\n        host_gib={{{hosts}}},\n"
            f"        source={device + ', benchmarks/memory_rows.py ' + date.today().isoformat()!r},\n    ),"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", default="none,group_lean", help="comma-separated rule names from RULES")
    parser.add_argument("--sizes", default="768,512", help="square sides in pixels")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per job")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args, extra = parser.parse_known_args(argv)
    rules = {r.name: r for r in RULES}
    unknown = [n for n in args.rules.split(",") if n not in rules]
    if unknown:
        parser.error(f"unknown rules {unknown}; RULES has {', '.join(rules)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows, device = [], "?"
    with (args.out / "memory_rows.jsonl").open("a") as log:
        for size in (int(s) for s in args.sizes.split(",")):
            baseline = None
            for name in args.rules.split(","):
                overrides = [*rule_overrides(rules[name]), f"bench.resolution={size}", f"frames={args.frames}",
                             "bench.warmup_steps=1", f"bench.measured_steps={args.steps}", *extra]  # fmt: skip
                result = run_job(overrides, args.timeout)
                row = {"rule": name, "size": size, "frames": args.frames, **result}
                if result.get("status") == "ok":
                    baseline = result["step_s"] if name == "none" else baseline
                    row["ratio"] = None if baseline is None else result["step_s"] / baseline
                    device = result.get("device", device)
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                _print_row(row)
    literal = rules_literal(rows, device)
    write_text_atomic(args.out / "rules.py.txt", literal + "\n")
    print(f"\nmeasured rules ({device}), for ruyi/memory/rules.py:\n{literal}")
    return 0


def _print_row(row: dict) -> None:
    head = f"| {row['rule']:<10} | {row['size']}x{row['size']}x{row['frames']} |"
    if row.get("status") != "ok":
        print(f"{head} {row.get('status')}: {row.get('error', '')[:200]}", flush=True)
        return
    ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.3f}"
    print(
        f"{head} peak {row['peak_gib']:.2f} GiB (encode {row['peak_encode_gib']:.2f}, denoise {row['peak_denoise_gib']:.2f}, "
        f"decode {row['peak_decode_gib']:.2f}) | {row['step_s']:.2f} s/step | x{ratio} vs none | weights "
        f"{row['weights_gib']:.1f} GiB | host peak {row['host_peak_gib']:.1f} GiB | {row['plan']['strategies']}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
