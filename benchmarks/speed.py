"""Transformer and VAE speed at Ruyi-Mini-7B's real shape with random weights (benchmarks/RESULTS.md).

    python -m benchmarks.speed [--shapes 512x24,768x120] [--options eager,fa3+pad96,compile+fa3+pad96]
        [--repeat 2] [--vae untiled,tiled512] [--vae-options eager,compile,channels_last]
        [--attention-options sdpa,cudnn+pad128,fa3+pad96] [--max-seconds 330] [--tiny]

Prints markdown tables as it goes and, when ``$OUT`` is set (or ``--json PATH``), rewrites a JSON
file after every row, so a run cut short keeps what it measured. ``--max-seconds`` skips (and
records as skipped) every row that would end past that budget, estimated from the shape's eager
forward plus a compile warm-up.

1. The bf16 matmul peak of this GPU, measured (8192³ products), which sets the FLOP floor.
2. One self-attention call of the largest shape, per backend: ms, TFLOP/s, rel. L2 vs the first.
3. Per shape (``SIDExFRAMES``, square video; CFG batch 2, one transformer forward) and option: the
   first call's seconds (compile warm-up), s/forward (median of ``--repeat``), the FLOP floor
   (linear + attention FLOPs counted by hooks on the model's real layers / measured peak), the
   ratio to it, peak GiB (of the model that ran: a second model kept for fp8 options is not
   counted) and rel. L2 vs the eager bf16 output. Options are ``+``-joined tokens
   (``benchmarks/speed_setup.py``): an attention backend (auto, sdpa, cudnn, flash, efficient,
   math, chunked, fa3), ``padN``, ``compile`` / ``compile@MODE``, ``dynamic``, ``fp8``.
4. The VAE decode of the largest shape (or ``--vae-shape``), untiled and in 512 px tiles: eager,
   ``compile`` (the decoder, per mini-batch) and ``channels_last`` (channels-last 3D +
   cudnn.benchmark).

``--tiny`` runs everything on the CPU with the tiny preset (the test does).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.speed_setup import (
    SpeedOption,
    applied,
    count_flops,
    forward_inputs,
    latent_grid,
    load_preset,
    parse_option,
    parse_shape,
    random_transformer,
    random_vae,
    rel_l2,
)
from ruyi.files import write_text_atomic
from ruyi.models.attention import FlashAttention3, SDPAAttention, attention
from ruyi.registry import ATTENTIONS

GIB = 1024**3
SHAPES = "512x24,512x120,768x48,768x120"
SLOW_WARMUP_S = 120.0  # a compile warm-up beyond this prints its phases
OPTIONS = "eager,auto,cudnn+pad128,fa3,fa3+pad96,compile,compile+fa3+pad96,compile+fa3+pad96+fp8"
ATTENTION_OPTIONS = "sdpa,cudnn,cudnn+pad128,flash,efficient,fa3,fa3+pad96"
# rough costs for --max-seconds: a regional compile of the blocks (H100/H200, inductor default
# mode), and the FP8 copy of the 7B; a VAE decode before the first one is measured
COMPILE_WARMUP_S, FP8_SETUP_S, VAE_FIRST_GUESS_S = 60.0, 20.0, 8.0
ROW_FORMATS = {
    "first_s": ".2f",
    "s": ".3f",
    "floor_s": ".3f",
    "x_floor": ".2f",
    "peak_gib": ".1f",
    "rel_l2": ".2e",
}
TINY = {"shapes": "64x8,96x16", "options": "eager,auto,math,chunked+pad96,compile", "attention": "sdpa,math"}


class Report:
    """Markdown to stdout as rows arrive; the whole JSON rewritten after every row."""

    def __init__(self, path: Path | None, env: dict[str, Any]) -> None:
        self.path, self.data = path, {"env": env, "rows": []}
        self.started = time.perf_counter()
        self.width = 0

    def table(self, title: str, columns: list[str]) -> None:
        self.width = len(columns)
        print(f"\n### {title}\n\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns), flush=True)

    def row(self, section: str, cells: list[str], record: dict[str, Any]) -> None:
        cells = cells + [""] * (self.width - len(cells))
        print("| " + " | ".join(cells) + " |", flush=True)
        self.data["rows"].append({"section": section, **record})
        if self.path is not None:
            write_text_atomic(self.path, json.dumps(self.data, indent=1, default=str))

    def failed(self, section: str, cells: list[str], record: dict[str, Any], err: BaseException) -> None:
        message = str(err).splitlines()[0][:100] if str(err) else type(err).__name__
        self.row(section, [*cells, f"failed: {message}"], {**record, "error": str(err)})

    def skipped(
        self,
        section: str,
        cells: list[str],
        record: dict[str, Any],
        args: argparse.Namespace,
        estimate_s: float = 0,
    ) -> bool:
        """Whether the row, expected to take ``estimate_s``, would end past ``--max-seconds`` (then
        it is recorded as skipped, and the run goes on with rows that still fit)."""
        if args.max_seconds <= 0 or self.elapsed() + estimate_s <= args.max_seconds:
            return False
        self.row(
            section, [*cells, f"skipped: time budget (~{estimate_s:.0f} s)"], {**record, "skipped": True}
        )
        return True

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Clock:
    """Seconds and peak memory of a call, synchronised on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated() / GIB if self.cuda else float("nan")

    def allocated(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else 0

    def time(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start

    def measure(
        self, fn: Callable[[], Any], *, warmup: int, repeat: int, first_s: float | None = None
    ) -> dict[str, Any]:
        """First call timed apart (compile warm-up), ``warmup - 1`` more untimed, then the median.
        ``first_s``: the first call already happened elsewhere and took this long."""
        self.reset_peak()
        out, first = (None, first_s) if first_s is not None else self.time(fn)
        for _ in range(max(0, warmup - 1)):
            out = fn()
        times = []
        for _ in range(repeat):
            out, seconds = self.time(fn)
            times.append(seconds)
        return {
            "out": out,
            "first_s": first,
            "s": statistics.median(times) if times else first,
            "peak_gib": self.peak_gib(),
        }


def matmul_peak(device: torch.device, dtype: torch.dtype, clock: Clock) -> float:
    """FLOP/s of the best of a few large products (the floor's denominator)."""
    n, iters = (8192, 10) if device.type == "cuda" else (512, 3)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        _, seconds = clock.time(lambda: [a @ b for _ in range(iters)])
        best = max(best, 2 * n**3 * iters / seconds)
    return best


def kernel_note(option: SpeedOption, device: torch.device) -> str:
    """What actually runs the self-attention, so that a silent fallback shows in the table."""
    backend = ATTENTIONS.get(option.attention)()
    if option.attention == "fa3":
        return "fa3" if backend.available(device) else "fa3 unavailable: torch sdpa"
    if option.attention == "auto":
        return backend.plan(device).label
    return option.attention


def largest_shape(shapes: str) -> tuple[int, int]:
    return max((parse_shape(s) for s in shapes.split(",") if s), key=lambda sf: sf[0] * sf[0] * sf[1])


def attention_section(report, args, device, dtype, clock, heads: int, head_dim: int, tokens: int) -> None:
    names = [n for n in args.attention_options.split(",") if n]
    if not names:
        return
    g = torch.Generator(device).manual_seed(0)
    shape = (2, heads, tokens, head_dim)
    q, k = (torch.randn(*shape, device=device, dtype=dtype, generator=g) for _ in range(2))
    # v as the processor hands it over: a transposed view of (B, L, heads, D)
    v = torch.randn(2, tokens, heads, head_dim, device=device, dtype=dtype, generator=g).transpose(1, 2)
    flops = 4 * 2 * heads * tokens * tokens * head_dim
    report.table(f"attention {shape} {dtype}", ["backend", "kernel", "ms", "TFLOP/s", "rel. L2 vs first"])
    reference = None
    for name in names:
        record = {"option": name}
        if report.skipped("attention", [name], record, args):
            continue
        option = parse_option(name, ATTENTIONS.names())
        backend = ATTENTIONS.get(option.attention)(pad_head_dim=option.pad)
        try:
            backend.prepare(device)
            result = clock.measure(
                lambda b=backend: attention(q, k, v, backend=b, self_attention=True),
                warmup=1,
                repeat=max(3, args.repeat),
            )
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            report.failed("attention", [name], record, err)
            continue
        out = result.pop("out")
        reference = out if reference is None else reference
        record.update(
            kernel=kernel_note(option, device), ms=result["s"] * 1e3, tflops=flops / result["s"] / 1e12
        )
        record["rel_l2"] = rel_l2(out, reference)
        cells = [f"{record['ms']:.1f}", f"{record['tflops']:.1f}", f"{record['rel_l2']:.2e}"]
        report.row("attention", [name, record["kernel"], *cells], record)


def transformer_section(report, args, device, dtype, clock, peak: float, arch: dict[str, Any]) -> None:
    options = [parse_option(n, ATTENTIONS.names()) for n in args.options.split(",") if n]
    held = clock.allocated()
    base = random_transformer(arch, dtype=dtype, device=device)
    held = {"base": clock.allocated() - held, "fp8": 0}  # bytes of each model, so that a row's peak
    # counts only the model it ran (both stay resident between options)
    SDPAAttention().attach(base)  # the eager reference: today's default, torch's SDPA as is
    fp8_model = None
    columns = [
        "shape",
        "tokens",
        "option",
        "kernel",
        "first s",
        "s/fwd",
        "floor s",
        "x floor",
        "peak GiB",
        "rel. L2",
    ]
    report.table(f"transformer forward, CFG batch 2, {dtype}, matmul peak {peak / 1e12:.4g} TFLOP/s", columns)
    for text in args.shapes.split(","):
        side, frames = parse_shape(text)
        grid = latent_grid(side, frames)
        tokens = grid["latent_frames"] * (grid["latent_height"] // 2) * (grid["latent_width"] // 2)
        inputs = forward_inputs(arch, **grid, dtype=dtype, device=device)
        with torch.no_grad():
            (flops, reference), reference_s = clock.time(lambda i=inputs: count_flops(base, *i))
        floor = flops.total / peak
        for option in options:
            record: dict[str, Any] = {"shape": text, "tokens": tokens, "option": option.name}
            cells = [text, str(tokens), option.name]
            # forwards at about the eager time, plus a compile warm-up / an FP8 copy of the model
            estimate = (args.warmup + args.repeat) * reference_s + COMPILE_WARMUP_S * option.compile
            estimate += FP8_SETUP_S * (option.fp8 and fp8_model is None)
            if report.skipped("transformer", cells, record, args, estimate):
                continue
            try:
                if option.fp8 and fp8_model is None:
                    from ruyi.precision.fp8_compute import FP8Compute

                    before, began = clock.allocated(), time.perf_counter()
                    fp8_model = copy.deepcopy(base)
                    FP8Compute().apply(fp8_model, dtype)
                    held["fp8"] = clock.allocated() - before
                    print(f"fp8 copy + quantise of the transformer: {time.perf_counter() - began:.1f} s", flush=True)
                model = fp8_model if option.fp8 else base
                # the FLOP-counting forward was the eager reference's first call
                first_s = reference_s if option.name == "eager" else None
                with applied(option, model, device), torch.no_grad():
                    result = clock.measure(
                        lambda m=model, i=inputs: m(*i[0], **i[1]),
                        warmup=args.warmup,
                        repeat=args.repeat,
                        first_s=first_s,
                    )
            except Exception as err:  # noqa: BLE001 - one failing option must not end the run
                report.failed("transformer", cells, record, err)
                continue
            record.update(
                kernel=kernel_note(option, device), first_s=result["first_s"], s=result["s"], floor_s=floor
            )
            if option.compile and result["first_s"] > SLOW_WARMUP_S:
                # where a long warm-up went (dynamo tracing, AOT, inductor): the fp8 row's was 520 s
                from torch._dynamo.utils import compile_times

                print(f"{text} {option.name}: first call {result['first_s']:.0f} s; compile phases:\n"
                      f"{compile_times(repr='str', aggregate=True)}", file=sys.stderr, flush=True)  # fmt: skip
            other = held["base"] if option.fp8 else held["fp8"]
            record.update(
                x_floor=result["s"] / floor,
                peak_gib=result["peak_gib"] - other / GIB,
                rel_l2=rel_l2(result["out"], reference),
            )
            record.update(linear_flops=flops.linear, attention_flops=flops.attention)
            numbers = [f"{record[key]:{spec}}" for key, spec in ROW_FORMATS.items()]
            report.row("transformer", [*cells, record["kernel"], *numbers], record)


def vae_section(report, args, device, dtype, clock, preset: dict[str, Any]) -> None:
    tilings = [t for t in args.vae.split(",") if t]
    variants = [v for v in args.vae_options.split(",") if v]
    if not tilings or not variants:
        return
    from ruyi.compile import RegionalCompile

    side, frames = parse_shape(args.vae_shape) if args.vae_shape else largest_shape(args.shapes)
    grid = latent_grid(side, frames)
    vae = random_vae(preset.get("vae_arch") or {}, dtype=dtype, device=device)
    shape = (1, vae.latent_channels, grid["latent_frames"], grid["latent_height"], grid["latent_width"])
    latents = torch.randn(
        *shape, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0)
    )
    columns = ["tiling", "variant", "first s", "s", "peak GiB", "rel. L2 vs eager"]
    report.table(f"VAE decode {side}² x {frames} (latents {shape})", columns)
    vae_s = 0.0 if args.tiny else VAE_FIRST_GUESS_S
    for tiling in tilings:
        try:
            set_tiling(vae, tiling)
        except ValueError as err:  # a tile size that does not fit this VAE
            report.failed("vae", [tiling, ""], {"tiling": tiling}, err)
            continue
        reference = None
        for variant in variants:
            record = {"tiling": tiling, "variant": variant}
            estimate = (1 + max(1, args.repeat - 1)) * vae_s + COMPILE_WARMUP_S * (variant == "compile")
            if report.skipped("vae", [tiling, variant], record, args, estimate):
                continue
            compiler, x, benchmark_flag = None, latents, torch.backends.cudnn.benchmark
            if variant == "compile":
                torch._dynamo.reset()
                compiler = RegionalCompile()
                compiler.compile_module(vae.decoder)
            elif variant == "channels_last":
                vae.to(memory_format=torch.channels_last_3d)
                x = latents.contiguous(memory_format=torch.channels_last_3d)
                torch.backends.cudnn.benchmark = True
            try:
                with torch.inference_mode():
                    result = clock.measure(
                        lambda x=x: vae.decode(x), warmup=1, repeat=max(1, args.repeat - 1)
                    )
            except Exception as err:  # noqa: BLE001
                report.failed("vae", [tiling, variant], record, err)
                continue
            finally:
                if compiler is not None:
                    compiler.restore()
                vae.to(memory_format=torch.contiguous_format)
                torch.backends.cudnn.benchmark = benchmark_flag
            out = result.pop("out")
            reference = out if reference is None else reference
            vae_s = result["s"] if variant != "compile" else vae_s
            record.update(
                first_s=result["first_s"],
                s=result["s"],
                peak_gib=result["peak_gib"],
                rel_l2=rel_l2(out, reference),
            )
            numbers = [
                f"{record['first_s']:.2f}",
                f"{record['s']:.2f}",
                f"{record['peak_gib']:.1f}",
                f"{record['rel_l2']:.2e}",
            ]
            report.row("vae", [tiling, variant, *numbers], record)
    vae.disable_tiling()


def set_tiling(vae: torch.nn.Module, tiling: str) -> None:
    """``untiled``, or ``tiledSIZE[:OVERLAP]`` in pixels (overlap 96 by default)."""
    if tiling == "untiled":
        vae.disable_tiling()
        return
    size, _, overlap = tiling.removeprefix("tiled").partition(":")
    vae.enable_tiling(tile_sample_size=int(size), tile_overlap=int(overlap or 96))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny preset on the CPU (tests)")
    parser.add_argument("--shapes", help=f"SIDExFRAMES list (default {SHAPES})")
    parser.add_argument("--options", help=f"transformer options (default {OPTIONS})")
    parser.add_argument(
        "--attention-options", help=f"attention call options (default {ATTENTION_OPTIONS}; '' = skip)"
    )
    parser.add_argument(
        "--vae",
        default=None,
        help="VAE tilings: untiled,tiledSIZE[:OVERLAP] (default untiled,tiled512; '' = skip)",
    )
    parser.add_argument("--vae-options", default="eager,compile,channels_last")
    parser.add_argument(
        "--vae-shape", default=None, help="SIDExFRAMES of the VAE decode (default: the largest shape)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="timed forwards per row (median)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="forwards before timing (the first one is reported)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=0, help="skip what starts after this many seconds (0 = no limit)"
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="JSON file (default $OUT/speed.json when OUT is set)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 1:
        parser.error("--repeat and --warmup must be >= 1")
    args.shapes = args.shapes or (TINY["shapes"] if args.tiny else SHAPES)
    args.options = args.options if args.options is not None else (TINY["options"] if args.tiny else OPTIONS)
    if args.attention_options is None:
        args.attention_options = TINY["attention"] if args.tiny else ATTENTION_OPTIONS
    args.vae = "untiled,tiled512" if args.vae is None else args.vae
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "speed.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    preset = load_preset("ruyi_tiny" if args.tiny else "ruyi_mini_7b")
    arch = preset["transformer_arch"]
    clock = Clock(device)
    peak = matmul_peak(device, dtype, clock)
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(dtype), "matmul_peak_tflops": peak / 1e12,
        "fa3": FlashAttention3().available(device),
        "argv": sys.argv[1:] if argv is None else argv,
    }  # fmt: skip
    report = Report(args.json, env)
    print(f"{env['device']}, torch {env['torch']}, {dtype}: measured matmul peak {peak / 1e12:.4g} TFLOP/s, "
          f"FlashAttention-3 {'available' if env['fa3'] else 'unavailable'}", flush=True)  # fmt: skip
    side, frames = largest_shape(args.shapes)
    grid = latent_grid(side, frames)
    tokens = grid["latent_frames"] * (grid["latent_height"] // 2) * (grid["latent_width"] // 2)
    heads = arch.get("num_attention_heads", 32)
    attention_section(report, args, device, dtype, clock, heads, arch.get("attention_head_dim", 88), tokens)
    transformer_section(report, args, device, dtype, clock, peak, arch)
    vae_section(report, args, device, dtype, clock, preset)
    print(f"\ndone in {report.elapsed():.0f} s", flush=True)
    return report.data


if __name__ == "__main__":
    main()
