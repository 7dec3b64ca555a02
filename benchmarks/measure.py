"""One benchmark job in its own process: ``python benchmarks/measure.py [hydra overrides]``.

Prints one line ``RESULT {json}``: peak GPU memory (``torch.cuda.max_memory_allocated``, as the
original's tables) per phase and overall, seconds per denoising step (mean of the steps after
warm-up) and the end-to-end time extrapolated to ``bench.report_steps`` steps.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from benchmarks.random_pipeline import build_random_pipeline  # noqa: E402
from ruyi.components import attach_strategies, import_builtins  # noqa: E402
from ruyi.io import procedural_image  # noqa: E402
from ruyi.plugins import build_plugins  # noqa: E402
from ruyi.samplers.loop import denoise  # noqa: E402

GIB = 1024**3


class StepTimer:
    """Per-step wall time, synchronised with the GPU."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, state) -> None:
        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, state) -> None:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def _phase(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - began, torch.cuda.max_memory_allocated() / GIB


def measure(cfg) -> dict:
    import_builtins()
    device = torch.device("cuda")
    offload, precision = instantiate(cfg.offload), instantiate(cfg.precision)
    home = "cuda" if type(offload).__name__ == "NoOffload" else "cpu"
    plugins = build_plugins(cfg)
    pipe = build_random_pipeline(cfg, device, home)
    attach_strategies(
        pipe, precision=precision, offload=offload, skip_steps=cfg.skip_steps, device=device,
        vae_tile_size=cfg.vae_tile_size, vae_tile_overlap=cfg.vae_tile_overlap, plugins=plugins,
    )  # fmt: skip
    torch.cuda.empty_cache()
    bench = cfg.bench
    steps = bench.warmup_steps + bench.measured_steps
    image = procedural_image(640, 640)
    request = pipe.check_inputs(
        image, None, frames=cfg.frames, base_resolution=cfg.base_resolution, video_size=list(cfg.video_size),
        steps=steps, cfg=cfg.cfg, seed=cfg.seed, camera=cfg.camera, motion=str(cfg.motion),
    )  # fmt: skip
    control = pipe.control.select(request.camera, request.motion)
    with torch.no_grad():
        image_latents, t_encode, m_encode = _phase(lambda: pipe.encode_images(image, None, request))
        timesteps = pipe.sampler.set_timesteps(steps, device=pipe.execution_device)
        latents = pipe.prepare_latents(request, None, torch.Generator().manual_seed(0))
        timer = StepTimer()
        model_fn = pipe.model_fn(request, control, image_latents)
        latents, t_denoise, m_denoise = _phase(
            lambda: denoise(model_fn, latents, pipe.sampler, timesteps, guidance_scale=request.guidance_scale,
                            callbacks=[*pipe.callbacks, timer], progress=False)  # fmt: skip
        )
        t_decode = m_decode = 0.0
        if bench.decode:
            _, t_decode, m_decode = _phase(lambda: pipe.decode(latents))
    per_step = sum(timer.times[bench.warmup_steps :]) / bench.measured_steps
    skipped = {type(p).__name__: p.skipped_steps for p in plugins if hasattr(p, "skipped_steps")}
    return {
        "status": "ok",
        "denoise_s": t_denoise,
        "plugin_skipped_steps": skipped,
        "step_s": per_step,
        "step_times_s": timer.times,
        "encode_s": t_encode,
        "decode_s": t_decode,
        "total_s_extrapolated": t_encode + per_step * bench.report_steps + t_decode,
        "peak_gib": max(m_encode, m_denoise, m_decode),
        "peak_denoise_gib": m_denoise,
        "peak_decode_gib": m_decode,
        "peak_encode_gib": m_encode,
    }


def main(overrides: list[str]) -> int:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="benchmark", overrides=overrides)
    try:
        result = measure(cfg)
    except torch.OutOfMemoryError as err:
        result = {"status": "oom", "error": str(err).splitlines()[0][:300]}
    result.update(device=torch.cuda.get_device_name(), overrides=overrides)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("error: benchmarks/measure.py measures GPU memory and needs a CUDA GPU")
    sys.exit(main(sys.argv[1:]))
