"""Paper projection of ``parallel`` on several GPUs, from single-GPU measurements.

Only one GPU is lent at a time, so nothing here is measured on several: per-step time and per-GPU
memory for 1/2/4/8 GPUs are projected from the measured single-GPU runs
(``benchmarks/results/sweep.jsonl`` and ``teacache.jsonl``, the raw data of RESULTS.md) plus the
bytes each layout moves. Every assumption is printed with the tables.

    python benchmarks/parallel_model.py                  # H200 tables + the two-12-GB-cards case
    python benchmarks/parallel_model.py --json out.json  # the same rows as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ruyi, installed or not

from ruyi.models.transformer.inputs import LatentGrid  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PRESET = Path(__file__).resolve().parents[1] / "configs" / "model" / "ruyi_mini_7b.yaml"
GIB = 2**30
BYTES = 2  # bf16
BATCH = 2  # the guidance pair: [negative; positive]
OUT_CHANNELS = 32  # the transformer's output (prediction + learn-sigma variance)
SKIPS_PARKED = 19  # long-skip activations that skip_steps=1 parks in CPU RAM (num_layers/2 - 1)
A2A_STAGING = 6  # hidden-sized copies the all-to-all adds per rank (q, k, v reshaped in and out)
LINKS = {"NVLink": 900.0, "PCIe": 64.0}  # GB/s, both directions together (as vendors quote them)
LINK_EFFICIENCY = 0.8  # share of one direction's bandwidth a collective achieves
SHAPES = [(512, 24), (512, 48), (512, 120), (768, 48), (768, 120)]
LAYOUTS = {  # GPUs -> (cfg, ulysses, shard_weights)
    1: [(1, 1, False)],
    2: [(2, 1, False), (1, 2, False), (2, 1, True)],
    4: [(2, 2, False), (1, 4, False), (2, 2, True)],
    8: [(2, 4, False), (1, 8, False), (2, 4, True)],
}


@dataclass(frozen=True)
class Model:
    """The transformer's facts, counted on the meta device from the preset (no weights)."""

    params: int
    block_params: int
    layers: int
    hidden: int
    heads: int
    vae_params: int
    clip_params: int

    @classmethod
    def count(cls) -> Model:
        import torch
        import yaml
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from ruyi.models.loading import meta_model
        from ruyi.registry import TRANSFORMERS, VAES

        preset = yaml.safe_load(PRESET.read_text())
        arch = preset["transformer_arch"]
        model = meta_model(TRANSFORMERS.get("ruyi_transformer3d"), arch)  # meta device: no memory, no init
        vae = meta_model(VAES.get("magvit"), preset.get("vae_arch") or {})
        with torch.device("meta"):
            clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**preset["image_encoder_arch"]))
        return cls(
            params=_numel(model), block_params=_numel(model.blocks), layers=arch["num_layers"],
            hidden=arch["hidden_size"], heads=arch["num_attention_heads"], vae_params=_numel(vae), clip_params=_numel(clip),
        )  # fmt: skip


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class Measured:
    """Single-GPU (H100, bf16, offload=none, random weights) figures and the memory fit."""

    step_s: dict[tuple[int, int], float]
    encode_s: dict[tuple[int, int], float]
    decode_s: dict[tuple[int, int], float]
    fixed_gib: float  # denoise peak at zero tokens: every model's weights + workspace
    gib_per_token: float  # denoise peak per token of the batch-2 input (activations)
    vae_extra_gib: dict[int, float]  # untiled encode/decode transient above the resident weights, by resolution
    vae_tiled_extra_gib: dict[int, float]  # the same with VAE tiles (384 at 512, 512 at 768)
    group_points: tuple[tuple[int, float], ...]  # (tokens, denoise GiB) of offload=group skip 1 at 512

    def group_denoise_gib(self, n_tokens: int) -> float:
        """offload=group skip_steps=1 denoise peak, interpolated linearly between the measured 512 runs."""
        (x0, y0), (x1, y1) = self.group_points[0], self.group_points[-1]
        return y0 + (y1 - y0) * (n_tokens - x0) / (x1 - x0)

    @classmethod
    def load(cls, model: Model) -> Measured:
        rows = [json.loads(line) for line in (RESULTS / "sweep.jsonl").read_text().splitlines() if line.strip()]
        ok = [r for r in rows if r.get("status") == "ok"]
        plain = [r for r in ok if r["offload"] == "none" and r["precision"] == "bf16" and not r.get("skip_steps")]
        key = lambda r: (r["resolution"], r["frames"])  # noqa: E731
        step = {key(r): r["step_s"] for r in plain}
        teacache_off = [json.loads(x) for x in (RESULTS / "teacache.jsonl").read_text().splitlines() if x.strip()][0]
        step[(512, 48)] = sum(teacache_off["step_times_s"][1:]) / (len(teacache_off["step_times_s"]) - 1)
        # least squares: peak_denoise = fixed + slope * tokens (batch 2)
        xs, ys = [tokens(*key(r)) for r in plain], [r["peak_denoise_gib"] for r in plain]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        fixed = my - slope * mx
        phase = lambda r: max(r["peak_decode_gib"], r["peak_encode_gib"])  # noqa: E731
        extra = {r["resolution"]: phase(r) - fixed for r in plain}
        # offload=group runs with tiles: the VAE alone on the GPU while it encodes/decodes
        vae_weights = model.vae_params * BYTES / GIB
        tiled: dict[int, float] = {}
        for r in ok:
            tile = r.get("vae_tile_size")
            if r["offload"] == "group" and r["precision"] == "bf16" and tile and tile < r["resolution"]:
                tiled[r["resolution"]] = max(tiled.get(r["resolution"], 0.0), phase(r) - vae_weights)
        group = sorted((tokens(*key(r)), r["peak_denoise_gib"]) for r in ok if r["offload"] == "group"
                       and r["precision"] == "bf16" and r["resolution"] == 512 and not r.get("vae_tile_size"))  # fmt: skip
        return cls(step, {key(r): r["encode_s"] for r in plain}, {key(r): r["decode_s"] for r in plain},
                   fixed, slope, extra, tiled, tuple(group))  # fmt: skip


def tokens(resolution: int, frames: int) -> int:
    """Transformer tokens of one 7B video (its VAE and 2x2 patches)."""
    return max(1, LatentGrid.of_video(frames, resolution, resolution).tokens)


@dataclass(frozen=True)
class Row:
    gpus: int
    link: str
    shape: str
    layout: str
    step_s: float
    speedup: float
    comm_s: float
    denoise_gib: float
    vae_gib: float


def project(model: Model, measured: Measured, shape: tuple[int, int], cfg: int, ulysses: int, shard: bool,
            link_gbs: float, *, slowdown: float = 1.0, park_skips: bool = False) -> dict[str, float]:  # fmt: skip
    """Per-step seconds and per-GPU GiB for one layout (see the printed assumptions)."""
    gpus = cfg * ulysses
    seq = tokens(*shape)
    batch_local, seq_local = BATCH / cfg, seq / ulysses
    one_way = link_gbs / 2 * LINK_EFFICIENCY * 1e9
    compute = measured.step_s[shape] * slowdown / gpus
    hidden_bytes = batch_local * seq_local * model.hidden * BYTES
    # Ulysses: q, k, v in and the output back, each rank keeping 1/ulysses of its own slice
    a2a = model.layers * 4 * hidden_bytes * (ulysses - 1) / ulysses / one_way
    out_bytes = batch_local * OUT_CHANNELS * seq * 4 * BYTES  # the prediction, 2x2 patches per token
    gather = out_bytes * (cfg - 1) / one_way
    fsdp = model.block_params * BYTES * (gpus - 1) / gpus / one_way if shard else 0.0
    step = compute + a2a + gather + max(0.0, fsdp - compute)  # prefetch hides FSDP behind compute
    block_bytes = model.block_params * BYTES / model.layers
    weights = model.params * BYTES if not shard else (model.params - model.block_params) * BYTES + model.block_params * BYTES / gpus + 2 * block_bytes
    other = measured.fixed_gib * GIB - model.params * BYTES  # VAE + CLIP + workspace
    per_token = measured.gib_per_token * GIB / BATCH  # bytes per token per batch element
    if park_skips:
        per_token -= SKIPS_PARKED * model.hidden * BYTES
    act = per_token * batch_local * seq_local + (A2A_STAGING * hidden_bytes if ulysses > 1 else 0)
    resident = weights + other
    return {"step_s": step, "comm_s": a2a + gather + fsdp, "denoise_gib": (resident + act) / GIB,
            "vae_gib": resident / GIB + measured.vae_extra_gib[shape[0]], "resident_gib": resident / GIB}  # fmt: skip


def layout_name(cfg: int, ulysses: int, shard: bool) -> str:
    parts = [f"cfg {cfg}"] if cfg > 1 else []
    parts += [f"ulysses {ulysses}"] if ulysses > 1 else []
    return " x ".join(parts or ["1 GPU"]) + (" + shard" if shard else "")


def print_assumptions(model: Model, measured: Measured) -> None:
    print("Assumptions (a projection, not a measurement):")
    print(f"- transformer {model.params / 1e9:.2f} B params ({model.block_params / 1e9:.2f} B in {model.layers} blocks), "
          f"hidden {model.hidden}, {model.heads} heads, bf16; counted on the meta device from {PRESET.name}")  # fmt: skip
    print("- compute per GPU = measured single-GPU step (H100, offload=none, CFG batch 2) / GPUs: the split is exact")
    print("  in FLOPs; kernels lose some efficiency on smaller shares (not modelled: an optimistic bound).")
    print("  H200 = H100 compute (same SMs and clocks; its larger, faster HBM only helps).")
    print(f"- links: {', '.join(f'{k} {v:g} GB/s' for k, v in LINKS.items())} both ways together; a collective gets "
          f"{LINK_EFFICIENCY:.0%} of one direction")  # fmt: skip
    print("- Ulysses moves 4 x (B/cfg) x (L/ulysses) x D x 2 bytes per rank and self-attention (q, k, v in, output out),")
    print("  (ulysses-1)/ulysses of it leaves the rank; diffusers does not overlap it with compute")
    print("- CFG: one all-gather of the prediction per step; FSDP: (n-1)/n of the block weights gathered per step,")
    print("  prefetched one block ahead so it hides behind compute; ranks hold their shards + 2 whole blocks")
    print(f"- memory: denoise peak = {measured.fixed_gib:.2f} GiB (weights + VAE + CLIP) + {measured.gib_per_token * 1024:.3f} MiB "
          "per token of the batch-2 input, a least-squares fit of the four offload=none runs; Ulysses adds "
          f"{A2A_STAGING} hidden-sized staging copies; CUDA context (~0.5 GiB) not counted, as in RESULTS.md")  # fmt: skip
    print(f"- VAE {model.vae_params / 1e6:.0f} M and CLIP {model.clip_params / 1e6:.0f} M params stay whole on every rank, which")
    print("  encodes and decodes the whole video (not split); VAE transients from the offload=none (untiled) and the")
    print("  offload=group + VAE tiles runs (minus the VAE's weights)")
    print("- tokens = frames/4 latent frames x (resolution/16)^2; 512x48 step time from the TeaCache-off run")
    print()


def h200_table(model: Model, measured: Measured) -> list[Row]:
    rows = []
    header = (f"{'shape':>8} {'GPUs':>4} {'link':>6} {'layout':<26} {'s/step':>7} {'speed-up':>8} {'comm s':>7} "
              f"{'denoise GiB':>11} {'VAE GiB':>8}")  # fmt: skip
    print("Per denoising step on H200s (one CFG-batched forward); per-GPU peak GiB while denoising and while")
    print("the (untiled) VAE encodes/decodes")
    print(header)
    print("-" * len(header))
    for shape in SHAPES:
        base = measured.step_s[shape]
        for gpus, layouts in LAYOUTS.items():
            for link, gbs in LINKS.items():
                if gpus == 1 and link != "NVLink":
                    continue
                for cfg, ulysses, shard in layouts:
                    p = project(model, measured, shape, cfg, ulysses, shard, gbs)
                    row = Row(gpus, link if gpus > 1 else "-", f"{shape[0]}x{shape[1]}", layout_name(cfg, ulysses, shard),
                              p["step_s"], base / p["step_s"], p["comm_s"], p["denoise_gib"], p["vae_gib"])  # fmt: skip
                    rows.append(row)
                    print(f"{row.shape:>8} {gpus:>4} {row.link:>6} {row.layout:<26} {row.step_s:7.2f} {row.speedup:7.2f}x "
                          f"{row.comm_s:7.2f} {row.denoise_gib:11.1f} {row.vae_gib:8.1f}")  # fmt: skip
        print()
    return rows


def two_small_cards(model: Model, measured: Measured, *, card_gb: float, slowdown: float, link: float) -> None:
    """The tracker's question: two 12 GB cards at 512 x 512 x 48 frames without CPU offload."""
    shape, budget = (512, 48), card_gb * 1e9 / GIB - 0.5  # minus the CUDA context
    vae_tiled = measured.vae_tiled_extra_gib[512]
    print(f"Two {card_gb:g} GB consumer cards, 512x512x48, 25 steps, VAE tiles of 384 px (PCIe {link:g} GB/s; compute "
          f"{slowdown:g}x slower than an H100: an RTX 4070-class card, ~58 bf16 TFLOPS with fp32 accumulation vs 989)")  # fmt: skip
    print(f"{'layout':<30} {'denoise GiB':>11} {'VAE GiB':>8} {'fits':>5} {'s/step':>7} {'25 steps':>10}")
    group = measured.group_denoise_gib(tokens(*shape))
    cases = [("1 card, offload=group skip 1", None), ("cfg 2 + shard", False), ("cfg 2 + shard + skip_steps=1", True)]
    for name, park in cases:
        if park is None:  # one card streaming its blocks from CPU RAM, the long skips parked
            step, denoise, vae = measured.step_s[shape] * slowdown, group, vae_tiled + model.vae_params * BYTES / GIB
        else:
            p = project(model, measured, shape, 2, 1, True, link, slowdown=slowdown, park_skips=park)
            step, denoise, vae = p["step_s"], p["denoise_gib"], p["resident_gib"] + vae_tiled
        fits = "yes" if max(denoise, vae) <= budget else "no"
        print(f"{name:<30} {denoise:11.1f} {vae:8.1f} {fits:>5} {step:7.1f} {25 * step / 60:6.1f} min")
    print(f"(budget {budget:.1f} GiB per card after the CUDA context. The one-card row assumes its PCIe transfers hide")
    print(" behind the slower compute, as they did on the H100 at 768x120; encode/decode add about a minute.)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the H200 rows here")
    parser.add_argument("--card-gb", type=float, default=12.0, help="consumer card memory, GB")
    parser.add_argument("--card-slowdown", type=float, default=17.0, help="consumer card compute vs an H100")
    parser.add_argument("--pcie", type=float, default=LINKS["PCIe"], help="consumer link GB/s, both ways")
    args = parser.parse_args()
    model = Model.count()
    measured = Measured.load(model)
    print_assumptions(model, measured)
    rows = h200_table(model, measured)
    two_small_cards(model, measured, card_gb=args.card_gb, slowdown=args.card_slowdown, link=args.pcie)
    if args.json:
        from ruyi.files import write_text_atomic

        write_text_atomic(args.json, json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
