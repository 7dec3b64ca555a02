"""How often ``compile=regional`` recompiles when the resolution or frame count changes.

``python benchmarks/compile_shapes.py [--device cpu] [--backend eager]``

Runs the tiny transformer (random weights) over a sequence of (latent frames, latent side)
shapes with ``dynamic`` = None (torch's default), False and True, and prints how many block
graphs dynamo compiled at each shape. ``--backend eager`` counts graphs without code generation
(fast, the same recompile decisions); ``--backend inductor`` also times each warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from benchmarks.speed_setup import forward_inputs, load_preset, random_transformer
from ruyi.compile import RegionalCompile

SHAPES = [(2, 8), (4, 8), (2, 16), (6, 12), (2, 8)]  # (latent frames, latent height = width)


def run(dynamic: bool | None, backend: str, device: str) -> list[tuple[int, int, float]]:
    arch = load_preset("ruyi_tiny")["transformer_arch"]
    model = random_transformer(arch, dtype=torch.float32, device=device)
    counter = CompileCounterWithBackend(backend)
    torch._dynamo.reset()
    compiler = RegionalCompile(dynamic=dynamic, backend=counter)
    compiler.compile_blocks(model, device=torch.device(device))
    rows = []
    with torch.no_grad():
        for frames, side in SHAPES:
            args, kwargs = forward_inputs(
                arch, latent_frames=frames, latent_height=side, latent_width=side, device=device
            )
            before, start = counter.frame_count, time.perf_counter()
            model(*args, **kwargs)
            rows.append((frames, side, counter.frame_count - before, time.perf_counter() - start))
    compiler.restore()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="eager", help="eager (count only) or inductor (also time)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, backend {args.backend}")
    print("| dynamic | " + " | ".join(f"{f}f x {s}² (graphs, s)" for f, s in SHAPES) + " |")
    print("|---" * (len(SHAPES) + 1) + "|")
    for dynamic in (None, False, True):
        rows = run(dynamic, args.backend, args.device)
        print(f"| {dynamic} | " + " | ".join(f"{n}, {t:.1f}" for _, _, n, t in rows) + " |", flush=True)


if __name__ == "__main__":
    main()
