"""How far does ``precision=fp8_compute`` move a whole video? Same pipeline, seed and input, bf16 vs FP8.

    python benchmarks/fp8_video.py                                  # 512² x 24 frames, 25 steps
    python benchmarks/fp8_video.py frames=48 bench.resolution=768   # any benchmark.yaml override

Builds the pipeline of ``configs/benchmark.yaml`` (random weights at the real 7B shape unless
``bench.weights`` says otherwise) with ``compile=regional attention=fa3 attention.pad_head_dim=96``
by default, generates one video in bf16, then converts the transformer's block linears to FP8 compute
in place (``FP8Compute.apply``, as the build does for ``precision=fp8_compute``), recompiles and
generates it again. Prints one ``RESULT {json}`` line: relative L2 of the final latents and of the
decoded video, the video's PSNR (pixels in [0, 1]) and largest pixel difference, each run's seconds.

On random weights the error says how much FP8 rounding accumulates over the sampling loop, not how
a trained model's video looks: judge the real checkpoint by eye as well.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from hydra import compose, initialize_config_dir

from benchmarks.speed_setup import rel_l2
from ruyi.assembly import PipelineSpec, build
from ruyi.io import procedural_image
from ruyi.precision.fp8_compute import FP8Compute

DEFAULTS = ["compile=regional", "attention=fa3", "attention.pad_head_dim=96", "steps=25"]


def generate(pipe, cfg) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(final latents, decoded video in [0, 1], seconds) of one video, the sampler's own path."""
    began = time.perf_counter()
    common = {"frames": cfg.frames, "base_resolution": cfg.base_resolution, "video_size": list(cfg.video_size),
              "steps": cfg.steps, "cfg": cfg.cfg, "seed": cfg.seed, "camera": cfg.camera, "motion": str(cfg.motion),
              "progress": False}  # fmt: skip
    latents = pipe(procedural_image(640, 640), None, output_latents=True, **common)
    video = pipe.decode(latents)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return latents.float().cpu(), video.float().cpu(), time.perf_counter() - began


def compare(cfg) -> dict:
    plan = PipelineSpec.from_config(cfg).validate()
    pipe = build(plan, weights=cfg.bench.weights)
    dtype = next(pipe.transformer.parameters()).dtype
    ref_latents, ref_video, ref_s = generate(pipe, cfg)
    converted = FP8Compute().apply(pipe.transformer, dtype)
    torch._dynamo.reset()  # the compiled blocks retrace around the FP8 weights
    fp8_latents, fp8_video, fp8_s = generate(pipe, cfg)
    result = {"linears_converted": converted, "latents_rel_l2": rel_l2(fp8_latents, ref_latents),
              "bf16_s": ref_s, "fp8_s": fp8_s}  # fmt: skip
    mse = float((fp8_video.double() - ref_video.double()).pow(2).mean())
    result.update(video_rel_l2=rel_l2(fp8_video, ref_video), video_psnr_db=10 * math.log10(1 / max(mse, 1e-20)),
                  video_max_abs=float((fp8_video - ref_video).abs().max()))  # fmt: skip
    return result


def main(overrides: list[str]) -> int:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="benchmark", overrides=[*DEFAULTS, *overrides])
    result = compare(cfg)
    result.update(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  overrides=[*DEFAULTS, *overrides])  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
