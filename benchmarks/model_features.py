"""The transformer's ModelMixin features at the real Ruyi-Mini-7B shape, with random weights.

``python benchmarks/model_features.py [--preset configs/model/ruyi_mini_7b.yaml] [--frames 24]
[--size 512] [--train-frames 8] [--compile-backend inductor] [--out DIR]``

One process, one table (markdown on stdout, JSON in ``--out``): building the model with
``random_model`` on the device, the save_pretrained -> load_model round trip through sharded
safetensors (bit-equal?), an eager forward (batch 2, as classifier-free guidance runs it),
``compile_repeated_blocks`` (first call and steady state, error against eager),
``enable_layerwise_casting`` to FP8 (error, weight memory) and a training step with and without
gradient checkpointing (peak memory, equal gradients?). Memory is
``torch.cuda.max_memory_allocated`` and only measured on CUDA; on the CPU the script is a smoke test
(``--preset configs/model/ruyi_tiny.yaml --frames 8 --size 64 --compile-backend eager``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from ruyi.files import write_text_atomic
from ruyi.models.loading import load_model, random_model
from ruyi.models.transformer import RuyiTransformer3D
from ruyi.models.transformer.inputs import LatentGrid, TransformerInputs, dummy_inputs

GIB = 1024**3


def make_inputs(
    model: RuyiTransformer3D, *, batch: int, frames: int, size: int, device, dtype
) -> TransformerInputs:
    """Random forward inputs for ``frames`` video frames of ``size`` x ``size`` pixels."""
    grid = LatentGrid.of_video(frames, size, size, patch_size=model.patch_size)
    return dummy_inputs(dict(model.config), grid, batch=batch, device=device, dtype=dtype, timestep=999.0)


def forward(model: RuyiTransformer3D, inputs: TransformerInputs) -> torch.Tensor:
    return inputs(model)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float | None]:
    """(result, seconds, peak GiB or None off CUDA)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return result, seconds, (torch.cuda.max_memory_allocated() / GIB if cuda else None)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def weight_gib(model: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / GIB


def train_step(model: RuyiTransformer3D, inputs: TransformerInputs) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    forward(model, inputs).float().square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="configs/model/ruyi_mini_7b.yaml")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--train-frames", type=int, default=8)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--out", default=None, help="folder for model_features.json")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    arch = yaml.safe_load(Path(args.preset).read_text())["transformer_arch"]
    rows: list[dict[str, Any]] = []

    def row(name: str, seconds: float, peak: float | None, **extra: Any) -> None:
        rows.append(
            {"feature": name, "seconds": round(seconds, 3), "peak_gib": peak and round(peak, 2), **extra}
        )
        print(f"  {name}: {rows[-1]}", file=sys.stderr, flush=True)

    build = lambda: random_model(RuyiTransformer3D, arch, dtype=dtype, device=device, seed=0)
    model, seconds, peak = timed(build, device)
    row("random_model", seconds, peak, weights_gib=round(weight_gib(model), 2))
    inputs = make_inputs(model, batch=2, frames=args.frames, size=args.size, device=device, dtype=dtype)

    with torch.no_grad():
        forward(model, inputs)  # warm-up (kernels, allocator)
        reference, seconds, peak = timed(lambda: forward(model, inputs), device)
    row("eager forward", seconds, peak)

    folder = Path(tempfile.mkdtemp(prefix="ruyi-model-features-"))
    try:
        _, seconds, _ = timed(
            lambda: model.save_pretrained(folder / "transformer", max_shard_size="5GB"), device
        )
        shards = len(list((folder / "transformer").glob("*.safetensors")))
        row("save_pretrained", seconds, None, shards=shards)
        loaded, seconds, _ = timed(
            lambda: load_model(RuyiTransformer3D, folder, dtype=dtype).to(device), device
        )
        state = model.state_dict()
        equal = all(torch.equal(t.to(device), state[k]) for k, t in loaded.state_dict().items())
        row("load_model (header check + from_pretrained)", seconds, None, bit_equal=equal)
        del loaded
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the folder this script created

    train = make_inputs(model, batch=1, frames=args.train_frames, size=args.size, device=device, dtype=dtype)
    model.train().requires_grad_(True)
    grads, seconds, peak = timed(lambda: train_step(model, train), device)
    grads = {k: v.clone() for k, v in grads.items()}
    row("train step", seconds, peak)
    model.enable_gradient_checkpointing()
    checkpointed, seconds, peak = timed(lambda: train_step(model, train), device)
    worst = max(rel_err(checkpointed[k], grads[k]) for k in grads if grads[k].abs().sum() > 0)
    row("train step, gradient checkpointing", seconds, peak, max_grad_rel_err=f"{worst:.2e}")
    del grads, checkpointed
    model.disable_gradient_checkpointing()
    model.zero_grad(set_to_none=True)
    model.eval().requires_grad_(False)

    torch._dynamo.reset()
    model.compile_repeated_blocks(backend=args.compile_backend)
    with torch.no_grad():
        _, seconds, _ = timed(lambda: forward(model, inputs), device)
        row(f"compile_repeated_blocks ({args.compile_backend}), first call", seconds, None)
        compiled, seconds, peak = timed(lambda: forward(model, inputs), device)
    row(
        f"compile_repeated_blocks ({args.compile_backend})",
        seconds,
        peak,
        rel_err=f"{rel_err(compiled, reference):.2e}",
    )
    del model, compiled

    model = build()
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    with torch.no_grad():
        forward(model, inputs)
        fp8, seconds, peak = timed(lambda: forward(model, inputs), device)
    row("layerwise casting fp8_e4m3fn", seconds, peak, weights_gib=round(weight_gib(model), 2),
        rel_err=f"{rel_err(fp8, reference):.2e}")  # fmt: skip

    print(
        f"\n{Path(args.preset).stem}, {args.frames} frames at {args.size}px (batch 2), {args.dtype} on {device}\n"
    )
    keys = ["feature", "seconds", "peak_gib"] + sorted(
        {k for r in rows for k in r} - {"feature", "seconds", "peak_gib"}
    )
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join("" if r.get(k) is None else str(r[k]) for k in keys) + " |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        meta = {"preset": args.preset, "frames": args.frames, "size": args.size, "device": str(device)}
        write_text_atomic(Path(args.out) / "model_features.json", json.dumps({**meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
