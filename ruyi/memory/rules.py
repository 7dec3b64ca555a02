"""The measured rules ``memory=auto`` chooses from: settings -> peak GPU memory and step time.

Each :class:`Rule` is one combination of placement (``offload``), long-skip parking, VAE tiles and
memory options, with the peak ``torch.cuda.max_memory_allocated`` of a whole pipeline call
(encode, denoise, decode) and its seconds per step relative to ``offload=none``, at the square
sizes and frame counts where it was measured. ``benchmarks/memory_rows.py`` measures the rows
(random weights at the real 7B shape, bf16, guidance on) and prints this table for pasting.

A request is predicted from the smallest measured size whose area covers it and the smallest
measured frame count that covers it (peaks grow with both), so a prediction errs on the high side;
beyond the largest measurement the peak is scaled up by the ratio of tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Shape = tuple[int, int]  # (square side in pixels, frames)


@dataclass(frozen=True)
class Rule:
    name: str
    offload: str
    skip_steps: int = 0
    vae_tile_size: int = 0
    memory: tuple[str, ...] = ()  # memory options, applied as memory=combo
    memory_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    offload_options: Mapping[str, Any] = field(default_factory=dict)
    peak_gib: Mapping[Shape, float] = field(default_factory=dict)
    step_ratio: Mapping[Shape, float] = field(default_factory=dict)  # s/step over offload=none's
    source: str = ""
    host_gib: Mapping[Shape, float] = field(default_factory=dict)  # measured peak RSS (else predicted)

    def predict(self, side: float, frames: int) -> tuple[float, float, Shape]:
        """(peak GiB, step ratio, the measured shape used) for a video of ``side``^2 pixels x ``frames``."""
        shapes = sorted(self.peak_gib, key=lambda s: (s[0], s[1]))
        covering = [s for s in shapes if s[0] >= side - 1e-6 and s[1] >= frames]
        if covering:
            ref = min(covering, key=lambda s: (s[0], s[1]))
            scale = 1.0
        else:  # beyond the measurements: scale the largest one by tokens
            ref = max(shapes, key=lambda s: (s[0] ** 2 * s[1], s[0]))
            scale = max(1.0, (side**2 * frames) / (ref[0] ** 2 * ref[1]))
        ratio = self.step_ratio.get(ref, max(self.step_ratio.values(), default=1.0))
        return self.peak_gib[ref] * scale, ratio, ref


H100 = "H100 80GB, benchmarks/RESULTS.md 2026-11-24 (first VAE tiling grid)"
ESTIMATE = (
    "ESTIMATE, TO MEASURE: activations from ruyi.memory.estimate at the real shape + the weights "
    "the placement keeps; time from the kernels' batch size (run benchmarks/memory_rows.py)"
)
H200 = "H200, benchmarks/RESULTS.md 2026-12-01 (second session: small GPUs after the VAE cache fix)"
H200_DISK = (
    "H200, benchmarks/RESULTS.md 2026-12-07 (768 x 120 measured through the in-place loader, the ratio "
    "against the defaults' step in the same call); 512 x 120 peak and host RAM measured on an H100 "
    "(tenth session; its step ratio ESTIMATED: no offload=none step in that call)"
)
H100_LEAN = (
    "H100, benchmarks/RESULTS.md 2026-12-07 (tenth session: 768 x 120 through the in-place loader; the ratio "
    "against offload=none without compile on the same warm machine)"
)
LEAN = ("cfg_split", "token_chunks", "inplace", "vae_stream")
TRANSFORMER_SPLIT = {"cfg_split": {"granularity": "transformer"}}

# Fastest first when several fit; ``memory=auto`` takes the fastest predicted step that fits.
RULES: tuple[Rule, ...] = (
    Rule(
        "none", "none",
        peak_gib={(512, 24): 22.54, (512, 120): 25.34, (768, 48): 32.49, (768, 120): 38.71},
        step_ratio={(512, 24): 1.0, (512, 120): 1.0, (768, 48): 1.0, (768, 120): 1.0},
        source=H100,
    ),
    # measured 26.1 GiB at 768 x 120 where it was estimated at 18.7: above a 24 GB card, which group_skip
    # serves; 512 x 120 is predicted from the 768 row (not measured: the estimate was 7 GiB low at 768)
    Rule(
        "none_lean", "none", vae_tile_size=384, memory=LEAN, memory_options=TRANSFORMER_SPLIT,
        peak_gib={(768, 120): 26.12},
        step_ratio={(768, 120): 1.02},
        source=H100_LEAN,
        host_gib={(768, 120): 14.56},
    ),
    Rule(
        "group_skip", "group", skip_steps=1, vae_tile_size=512,
        peak_gib={(512, 24): 6.02, (512, 120): 6.19, (768, 48): 5.57, (768, 120): 12.18},
        step_ratio={(512, 24): 1.39, (512, 120): 1.055, (768, 48): 1.056, (768, 120): 1.02},
        source=H100,
    ),
    # 768 x 120 measured with 384 px tiles: its peak is set while denoising (decode 4.72 GiB), and
    # smaller tiles only lower the decode's; 512 x 120 with 256 px tiles (384 px: 4.25 GiB, set by decode)
    Rule(
        "group_lean", "group", skip_steps=1, vae_tile_size=256, memory=LEAN, memory_options=TRANSFORMER_SPLIT,
        peak_gib={(512, 120): 3.46, (768, 120): 5.58},
        step_ratio={(512, 120): 1.066, (768, 120): 1.024},
        source=H200,
    ),
    # the same GPU plan with less host RAM. Since the transformer loads straight into its pinned place,
    # group_lean keeps one host copy too; one_copy still leaves it unpinned (pinned per transfer: page-
    # locked memory is what a PC runs short of) at a slower step; disk keeps none
    Rule(
        "group_lean_one_copy", "group", skip_steps=1, vae_tile_size=256, memory=LEAN,
        memory_options=TRANSFORMER_SPLIT, offload_options={"low_cpu_mem_usage": True},
        peak_gib={(512, 120): 3.46, (768, 120): 5.58},
        step_ratio={(512, 120): 1.1, (768, 120): 1.06},
        source=ESTIMATE,
    ),
    Rule(
        "group_lean_disk", "group", skip_steps=1, vae_tile_size=256, memory=LEAN,
        memory_options=TRANSFORMER_SPLIT, offload_options={"disk": True},
        peak_gib={(512, 120): 3.35, (768, 120): 6.10},
        step_ratio={(512, 120): 1.3, (768, 120): 1.25},
        source=H200_DISK,
        host_gib={(512, 120): 8.30, (768, 120): 13.86},
    ),
)  # fmt: skip
