"""Host RAM and time of loading the 7B's transformer for ``offload=group``: ``from_pretrained`` then the
placement (before) against the weights read straight into their final place (now), with and
without ``offload.disk``. Host memory is a property of the CPU side, so this runs on any machine.

    python benchmarks/host_load.py [--dir FOLDER] [--modes from_pretrained,in_place,...] [--dtype bfloat16]

It writes, once, a checkpoint folder with random bf16 weights at the real transformer shape
(``configs/model/ruyi_mini_7b.yaml``, ~14.4 GB) into ``--dir`` (kept, and reused by the next run), or
into a temporary folder removed at the end. Each mode then runs in a fresh process (one's freed
memory cannot lower the next one's peak): it loads the transformer and attaches
``offload=group offload.use_stream=false`` on the CPU, then (in memory) reads every weight once as a
first forward does, and reports its peak resident memory after attaching and after that read
(``ru_maxrss``, which counts the file pages the process has mapped: ``from_pretrained`` hands out
tensors backed by a memory map of the checkpoint, read only when first touched), the peak of its
anonymous memory alone (sampled every 20 ms from /proc: what the operating system cannot drop), and
the wall times. Printed as a markdown table.

On a CPU nothing is pinned: the pinned copy that diffusers' hooks add beside a ``from_pretrained``
model when they prefetch on a CUDA stream (a second 13.4 GiB) is not in these numbers; loading
straight into pinned memory avoids it by construction (``ruyi.placement.group``), which a GPU run
must confirm.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

MODES = ("from_pretrained", "in_place", "from_pretrained_disk", "in_place_disk")
GIB = 1024**3
WEIGHTS = "diffusion_pytorch_model.safetensors"


def write_checkpoint(root: Path, *, seed: int = 0) -> Path:
    """``root/transformer`` with random N(0, 0.02) bf16 weights at the 7B's shape, written one
    tensor at a time (no full copy in RAM; ``benchmarks/random_checkpoint.py``'s writer)."""
    from benchmarks.random_checkpoint import write_part, write_transformer
    from ruyi.hydra_config import load_preset
    from ruyi.models.transformer import RuyiTransformer3D

    folder = root / "transformer"
    if not (folder / WEIGHTS).is_file():
        arch = load_preset("ruyi_mini_7b")["transformer_arch"]
        write_part(folder, lambda tmp: write_transformer(tmp, RuyiTransformer3D, arch, seed=seed))
    return folder


class AnonPeak:
    """The peak of RssAnon (/proc/self/status), sampled in a thread."""

    def __init__(self, every: float = 0.02) -> None:
        self.peak_kib, self._stop, self._every = 0, threading.Event(), every
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self._every)

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def measure(mode: str, root: Path, dtype_name: str) -> dict:
    """One mode in this process: load the transformer, attach offload=group on the CPU."""
    from types import SimpleNamespace

    import torch

    from ruyi.assembly import parse_dtype
    from ruyi.checkpoints import load_models
    from ruyi.models.in_place import WeightsHome
    from ruyi.models.transformer import RuyiTransformer3D
    from ruyi.placement.group import GroupOffload
    from ruyi.precision.fp8 import PipelineDtype

    dtype = parse_dtype(dtype_name)
    disk_dir = None
    if mode.endswith("_disk"):
        disk_dir = Path(tempfile.mkdtemp(prefix="offload-", dir=root))  # this process's own: removed below
    placement = GroupOffload(use_stream=False, disk=disk_dir is not None, disk_dir=None if disk_dir is None else str(disk_dir))
    plan = SimpleNamespace(device=torch.device("cpu"), precision=PipelineDtype(), has=lambda _fact: False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    start = time.perf_counter()
    with AnonPeak() as anon:
        home = placement.weights_home("transformer", plan) if mode == "in_place_disk" else WeightsHome()
        # in_place: into plain memory, what the pinned path does on a GPU (a CPU cannot page-lock)
        homes = {"transformer": home} if mode.startswith("in_place") else None
        models = load_models({"transformer": RuyiTransformer3D}, root, dtype=dtype, homes=homes)
        loaded = time.perf_counter() - start
        pipe = SimpleNamespace(execution_device=torch.device("cpu"), modules=models)
        placement.apply(pipe)
        seconds = time.perf_counter() - start
        attached = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        if disk_dir is None:  # what a first forward does: read every weight once (mapped pages come in)
            for param in models["transformer"].parameters():
                torch.sum(param)
        used = time.perf_counter() - start
    written = sum(p.stat().st_size for p in disk_dir.rglob("*.safetensors")) / GIB if disk_dir else 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux
    if disk_dir is not None:
        shutil.rmtree(disk_dir, ignore_errors=True)
    return {"mode": mode, "attached_rss_gib": attached, "peak_rss_gib": peak, "peak_anon_gib": anon.peak_kib / 1024**2,
            "before_gib": before, "load_s": loaded, "total_s": seconds, "used_s": used, "disk_gib": written}  # fmt: skip


def run_modes(root: Path, modes: list[str], dtype: str) -> list[dict]:
    rows = []
    for mode in modes:
        command = [sys.executable, __file__, "--measure", mode, "--dir", str(root), "--dtype", dtype]
        done = subprocess.run(command, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            rows.append({"mode": mode, "error": (done.stderr.strip().splitlines() or ["?"])[-1], "rc": done.returncode})
        else:
            rows.append(json.loads(lines[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = [("| load | RSS after load + attach (GiB) | peak RSS, weights read once (GiB) | peak anonymous (GiB) | "
            "imports (GiB) | load (s) | load + attach (s) | + read once (s) | group files (GiB) |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        if "error" in row:
            out.append(f"| `{row['mode']}` | failed (rc {row['rc']}): {row['error']} | | | | | | | |")
            continue
        out.append(
            f"| `{row['mode']}` | {row['attached_rss_gib']:.2f} | {row['peak_rss_gib']:.2f} | {row['peak_anon_gib']:.2f} | "
            f"{row['before_gib']:.2f} | {row['load_s']:.1f} | {row['total_s']:.1f} | "
            f"{row['used_s']:.1f} | {row['disk_gib']:.2f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the random checkpoint is written once and kept")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)  # one mode, in this process
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.dir, args.dtype)), flush=True)
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    root = args.dir or Path(tempfile.mkdtemp(prefix="ruyi-host-load-"))
    try:
        start = time.perf_counter()
        write_checkpoint(root)
        print(f"checkpoint at {root} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        print(table(run_modes(root, modes, args.dtype)))
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
