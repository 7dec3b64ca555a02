"""Measure the rows of ``memory=auto``'s rule table (``ruyi/memory/rules.py``) on this GPU.

    python benchmarks/memory_rows.py --rules none,group_skip,group_lean,none_lean --sizes 768,512 --out $OUT
    python benchmarks/memory_rows.py --checkpoint /tmp/ruyi-7b --write-checkpoint --rules group_lean_disk,none --sizes 768 --out $OUT

Each (rule, size) is one ``benchmarks/measure.py`` job in a fresh process (as ``sweep.py`` runs
them): the full pipeline at the preset's real shape (``--model``, the 7B by default), ``--frames``
frames, one warm-up and ``--steps`` timed steps. Without ``--checkpoint`` the weights are random
numbers made in memory, which bypasses the loader; with ``--checkpoint DIR`` every row loads the
checkpoint folder DIR through the real loader (``model.path=DIR``), so the host peak includes loading.
``--write-checkpoint`` first writes a random checkpoint at the preset's shape into DIR when DIR is not
one yet (``benchmarks/random_checkpoint.py``; it refuses a folder it did not write).

Prints peak GiB (overall and per phase), s/step and its ratio to ``none`` at the same size and
frames, the weights' bytes, the process's peak host RAM (``ru_maxrss``; while loading; anonymous
memory alone) and the load time; appends every job's JSON to ``--out/memory_rows.jsonl``, and
writes ``--out/memory_rows.md`` (a table of every row in that log) and the measured rules, ready to
paste into ``RULES``, to ``--out/rules.py.txt``. The ratio takes the ``none`` row of this run, else
the latest one in the log with the same weights, so rows may be measured by separate calls.
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
from ruyi.errors import CheckpointError
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


def checkpoint_overrides(folder: Path, model: str, *, write: bool) -> list[str]:
    """The overrides that load ``folder`` through the loader, after writing a random checkpoint of
    ``model``'s shape into it when ``write`` and it is not a checkpoint yet. Raises (before any job
    runs) for a folder that is not a checkpoint without ``write``, and for one the writer did not make."""
    import subprocess

    from benchmarks.random_checkpoint import MARKER, check_ours
    from ruyi.checkpoints import is_checkpoint

    folder = Path(folder).expanduser().resolve()
    if (folder / MARKER).is_file():
        check_ours(folder, model)  # a random checkpoint of another preset would fail every row
    if not is_checkpoint(folder):
        if not write:
            raise CheckpointError(
                f"--checkpoint {folder} is not a checkpoint folder; add --write-checkpoint to write a random one there"
            )
        check_ours(folder, model)  # refuses a folder it did not write, before the subprocess starts
        writer = [
            sys.executable,
            str(REPO / "benchmarks" / "random_checkpoint.py"),
            str(folder),
            "--preset",
            model,
        ]
        if subprocess.run(writer, check=False).returncode != 0:  # its own process: no CUDA context held here
            raise CheckpointError(f"writing the random checkpoint into {folder} failed (see above)")
    return ["bench.weights=checkpoint", f"model.path={folder}"]


def latest(rows: list[dict]) -> list[dict]:
    """The last ok row of each (rule, size, frames, weights), in first-seen order."""
    kept: dict[tuple, dict] = {}
    for row in rows:
        if row.get("status") == "ok":
            kept[(row["rule"], row["size"], row["frames"], row.get("weights_from", "random"))] = row
    return list(kept.values())


def with_ratios(rows: list[dict]) -> list[dict]:
    """``rows`` (latest of each) with ``ratio``: s/step over the ``none`` row of the same size,
    frames and weights."""
    rows = latest(rows)
    base = {
        (r["size"], r["frames"], r.get("weights_from", "random")): r["step_s"]
        for r in rows
        if r["rule"] == "none"
    }
    for row in rows:
        step = base.get((row["size"], row["frames"], row.get("weights_from", "random")))
        row["ratio"] = None if step is None else row["step_s"] / step
    return rows


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rules_literal(rows: list[dict], device: str) -> str:
    """``Rule(...)`` entries with the measured peaks and ratios (settings copied from RULES)."""
    by_rule: dict[str, list[dict]] = {}
    for row in with_ratios(rows):
        if row.get("ratio") is not None:
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
    parser.add_argument("--model", default="ruyi_mini_7b", help="the model preset whose shape is measured")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="load this checkpoint folder in every row (the real loader)",
    )
    parser.add_argument(
        "--write-checkpoint",
        action="store_true",
        help="write a random checkpoint into --checkpoint first if it is not one",
    )
    parser.add_argument(
        "--offload-dir",
        type=Path,
        default=None,
        help="existing folder for the group files of rules with offload disk",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args, extra = parser.parse_known_args(argv)
    rules = {r.name: r for r in RULES}
    unknown = [n for n in args.rules.split(",") if n not in rules]
    if unknown:
        parser.error(f"unknown rules {unknown}; RULES has {', '.join(rules)}")
    if any(o.startswith(("model=", "model.path=", "bench.weights=")) for o in extra):
        parser.error("choose the model with --model and its weights with --checkpoint, not with overrides")
    if args.write_checkpoint and args.checkpoint is None:
        parser.error("--write-checkpoint needs --checkpoint DIR")
    weights, weights_from = [], "random"
    if args.checkpoint is not None:
        try:
            weights = checkpoint_overrides(args.checkpoint, args.model, write=args.write_checkpoint)
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        weights_from = f"checkpoint:{weights[-1].split('=', 1)[1]}"
    on_cpu = "device=cpu" in extra  # a dry run: group offload cannot prefetch on a CUDA stream there
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "memory_rows.jsonl"
    rows, device = read_log(log_path), "?"
    with log_path.open("a") as log:
        for size in (int(s) for s in args.sizes.split(",")):
            for name in args.rules.split(","):
                rule = rules[name]
                placement = []
                if rule.offload == "group" and on_cpu:
                    placement.append("offload.use_stream=false")
                if rule.offload_options.get("disk") and args.offload_dir is not None:
                    placement.append(f"offload.disk_dir={args.offload_dir.resolve()}")
                overrides = [*rule_overrides(rule), *placement, f"model={args.model}", *weights, f"bench.resolution={size}",
                             f"frames={args.frames}", "bench.warmup_steps=1", f"bench.measured_steps={args.steps}", *extra]  # fmt: skip
                result = run_job(overrides, args.timeout)
                row = {
                    "rule": name,
                    "size": size,
                    "frames": args.frames,
                    "weights_from": weights_from,
                    **result,
                }
                if result.get("status") == "ok":
                    device = result.get("device", device)
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                _print_row(row, with_ratios(rows))
    write_text_atomic(args.out / "memory_rows.md", table(rows) + "\n")
    literal = rules_literal(rows, device)
    write_text_atomic(args.out / "rules.py.txt", literal + "\n")
    print(f"\n{table(rows)}\n\nmeasured rules ({device}), for ruyi/memory/rules.py:\n{literal}")
    return 0


def table(rows: list[dict]) -> str:
    """Every measured row of the log (the latest of each), GPU peak beside host RAM and time."""
    head = (
        "| rule | size x frames | weights | GPU peak GiB (encode / denoise / decode) | host peak RSS GiB | "
        "of it by the end of loading | anonymous peak GiB | load s | s/step | x none | device |"
    )
    out = [head, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in with_ratios(rows):
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        source = "random" if r.get("weights_from", "random") == "random" else "checkpoint"
        out.append(
            f"| `{r['rule']}` | {r['size']}² x {r['frames']} | {source} | {r['peak_gib']:.2f} ({r['peak_encode_gib']:.2f} / "
            f"{r['peak_denoise_gib']:.2f} / {r['peak_decode_gib']:.2f}) | {r['host_peak_gib']:.2f} | "
            f"{r.get('host_load_peak_gib', float('nan')):.2f} | {r.get('host_peak_anon_gib', float('nan')):.2f} | "
            f"{r.get('load_s', float('nan')):.1f} | {r['step_s']:.2f} | {ratio} | {r.get('device', '?')} |"
        )
    return "\n".join(out)


def _print_row(row: dict, measured: list[dict]) -> None:
    head = f"| {row['rule']:<15} | {row['size']}x{row['size']}x{row['frames']} |"
    if row.get("status") != "ok":
        print(f"{head} {row.get('status')}: {row.get('error', '')[:200]}", flush=True)
        return
    key = (row["rule"], row["size"], row["frames"], row["weights_from"])
    ratio = next(
        (
            r["ratio"]
            for r in measured
            if (r["rule"], r["size"], r["frames"], r.get("weights_from", "random")) == key
        ),
        None,
    )
    ratio = "-" if ratio is None else f"{ratio:.3f}"
    print(
        f"{head} peak {row['peak_gib']:.2f} GiB (encode {row['peak_encode_gib']:.2f}, denoise {row['peak_denoise_gib']:.2f}, "
        f"decode {row['peak_decode_gib']:.2f}) | {row['step_s']:.2f} s/step | x{ratio} vs none | weights "
        f"{row['weights_gib']:.1f} GiB ({row['weights_from']}) | host peak {row['host_peak_gib']:.1f} GiB "
        f"(loading {row['host_load_peak_gib']:.1f}, anonymous {row['host_peak_anon_gib']:.1f}) | load {row['load_s']:.1f} s | "
        f"{row['plan']['strategies']}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
