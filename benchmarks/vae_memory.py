"""MagViT VAE time and peak memory, untiled vs spatially tiled, at the real shape with random weights.

``python benchmarks/vae_memory.py [--latents 1,16,30,96,96] [--tiles 512:96,640:96] [--no-encode]``

Builds ``MagvitVAE3D()`` (Ruyi-Mini-7B's config) on the GPU in bfloat16 with random weights and
prints a markdown table: seconds, ``torch.cuda.max_memory_allocated`` (absolute, as the issue's
figures, and above what was allocated before the call: weights and input) and the error of each
tiled result against the untiled one. Encode uses a random video of the matching shape (120 x
768 x 768 for the default latents). Needs CUDA; one process measures all rows, which is fair for
``max_memory_allocated`` (the allocator's cache is not counted).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ruyi.models.vae import MagvitVAE3D  # noqa: E402
from ruyi.models.vae.tiling import tile_grid  # noqa: E402

GIB = 1024**3


def parse_tiles(text: str) -> list[tuple[int, int]]:
    """``"512:96,640:96"`` -> [(512, 96), (640, 96)] (tile_sample_size:tile_overlap in pixels)."""
    return [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item]  # type: ignore[misc]


def measure(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float, float]:
    """(output, seconds, peak GiB, peak GiB above the memory allocated before the call)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return out, time.perf_counter() - start, peak / GIB, (peak - before) / GIB


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |diff| / max |ref|, rms diff / rms ref), computed frame by frame to bound memory."""
    worst, sq_diff, sq_ref, peak = 0.0, 0.0, 0.0, 0.0
    for f in range(ref.shape[2]):
        a, b = out[:, :, f].float(), ref[:, :, f].float()
        worst = max(worst, float((a - b).abs().max()))
        peak = max(peak, float(b.abs().max()))
        sq_diff += float((a - b).pow(2).sum())
        sq_ref += float(b.pow(2).sum())
    return worst / max(peak, 1e-12), (sq_diff / max(sq_ref, 1e-24)) ** 0.5


def run(op: str, vae: MagvitVAE3D, x: torch.Tensor, tiles: list[tuple[int, int]]) -> list[str]:
    call = vae.decode if op == "decode" else (lambda v: vae.encode(v)[0])
    vae.disable_tiling()
    ref, base_s, peak, extra = measure(lambda: call(x))
    ref = ref.cpu()  # off the GPU so that it does not count in the tiled peaks
    rows = [f"| {op} | untiled | 1 | {base_s:.2f} | 1.00 | {peak:.2f} | {extra:.2f} | 0 | 0 |"]
    factor = 1 if op == "decode" else vae.spatial_compression
    latent_hw = (x.shape[-2] // factor, x.shape[-1] // factor)
    for size, overlap in tiles:
        tiling = vae.enable_tiling(tile_sample_size=size, tile_overlap=overlap)
        grid = tile_grid(*latent_hw, tiling, vae.spatial_compression)
        counts = f"{len({t.rows.start for t in grid})}x{len({t.cols.start for t in grid})}"
        shape = f"{counts} of {grid[0].rows.stop * 8}x{grid[0].cols.stop * 8}"
        out, secs, peak, extra = measure(lambda: call(x))
        worst, rms = errors(out, ref.to(out.device))
        del out
        cells = [op, f"{size}/{overlap}", shape, f"{secs:.2f}", f"{secs / base_s:.2f}", f"{peak:.2f}"]
        rows.append("| " + " | ".join(cells + [f"{extra:.2f}", f"{worst:.3g}", f"{rms:.3g}"]) + " |")
    vae.disable_tiling()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", default="1,16,30,96,96", help="B,C,F',h,w of the latents to decode")
    parser.add_argument("--tiles", default="512:96,640:96,640:64", help="tile_sample_size:tile_overlap,...")
    parser.add_argument("--no-encode", action="store_true", help="only decode")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("vae_memory.py measures CUDA memory and needs a CUDA GPU; none is visible")
    device = torch.device("cuda")
    torch.manual_seed(0)
    with device:
        vae = MagvitVAE3D().to(torch.bfloat16).eval()
    b, c, f, h, w = (int(v) for v in args.latents.split(","))
    tiles = parse_tiles(args.tiles)
    with torch.inference_mode():  # warm-up: CUDA context, cuDNN and cuBLAS handles
        vae.decode(torch.randn(1, c, 2, 8, 8, device=device, dtype=torch.bfloat16))
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, random weights\n")
    header = ["op", "tiles px/overlap", "grid", "s", "x untiled", "peak GiB", "over input GiB", "max rel err"]
    print("| " + " | ".join(header + ["rms rel err"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    latents = torch.randn(b, c, f, h, w, device=device, dtype=torch.bfloat16)
    for row in run("decode", vae, latents, tiles):
        print(row, flush=True)
    del latents
    if not args.no_encode:
        frames = 1 if f == 1 else f * vae.temporal_compression
        video = torch.rand(b, 3, frames, h * 8, w * 8, device=device, dtype=torch.bfloat16) * 2 - 1
        for row in run("encode", vae, video, tiles):
            print(row, flush=True)


if __name__ == "__main__":
    main()
