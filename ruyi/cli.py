"""The body of ``scripts/infer.py``: validate everything, build through the assembly, run, write.

A user error (:class:`ruyi.errors.RuyiUserError`) ends as one line on stderr and exit code 2,
found before any weights load where possible (options, device, numbers, images and the output
location are all checked first), and never leaves a partial output file. Any other exception is
a bug: it propagates with its traceback (exit 1). Command-line overrides themselves (unknown
keys, unknown component names) are checked even earlier, before Hydra composes: ``ruyi.overrides``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from ruyi.assembly import PipelineSpec, build, resolve_device
from ruyi.errors import ConfigError, OutputError, exit_code_of
from ruyi.files import OutputGuard
from ruyi.io import check_fps, check_output_path, procedural_image, write_video
from ruyi.parallel import init_distributed, is_main_process, main_process_first, quiet_other_ranks, shutdown
from ruyi.pipeline import validate_request
from ruyi.weights import resolve_checkpoint

log = logging.getLogger("ruyi")

# the lowest-memory setting measured so far (benchmarks/RESULTS.md, H100, real 7B shape)
OOM_HINT = (
    "out of GPU memory; memory=auto picks what fits this GPU (the lowest measured, `offload=group skip_steps=1 "
    "vae_tile_size=256 memory=combo`, runs 768x768x120 frames in 5.6 GiB), or lower frames / base_resolution"
)


def request_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The call's arguments as the config gives them (checked by ``validate_request``)."""
    video_size = cfg.video_size
    if isinstance(video_size, ListConfig):
        video_size = list(video_size)
    return dict(
        frames=cfg.frames, base_resolution=cfg.base_resolution, video_size=video_size, steps=cfg.steps,
        cfg=cfg.cfg, seed=cfg.seed, camera=cfg.camera, motion=str(cfg.motion),
    )  # fmt: skip


def images(cfg: DictConfig):
    start = to_absolute_path(str(cfg.image)) if cfg.image is not None else procedural_image()
    end = to_absolute_path(str(cfg.end_image)) if cfg.end_image is not None else None
    return start, end


def output_path(cfg: DictConfig) -> Path:
    """Where this job writes. In a Hydra multirun every job gets its own file: the job number is
    appended (``outputs/ruyi_3.mp4``) unless ``output`` interpolates something itself
    (``output='outputs/seed${seed}.mp4'``), so no job overwrites another's video."""
    output = cfg.output
    if output is None or not str(output).strip():
        raise OutputError("output is empty; give a path ending in .mp4, or a new folder for PNG frames")
    path = Path(to_absolute_path(str(output)))
    job = _multirun_job()
    if job is not None and not OmegaConf.is_interpolation(cfg, "output"):
        path = path.with_name(f"{path.stem}_{job}{path.suffix}")
    return path


def _multirun_job() -> int | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return int(hydra_cfg.job.num) if hydra_cfg.mode == RunMode.MULTIRUN else None


def run(cfg: DictConfig) -> int:
    """Generate one video as the config says; returns the process exit code (130/143 when Ctrl-C
    or SIGTERM stopped it: one line says whether the output was changed)."""
    guard = OutputGuard()
    try:
        return exit_code_of(lambda: _run(cfg, guard), oom_hint=OOM_HINT, on_interrupt=guard.describe)
    finally:
        shutdown()  # torchrun: every rank leaves the process group


def _run(cfg: DictConfig, guard: OutputGuard | None = None) -> int:
    # 1. pre-flight: every check that needs no weights (options, device, numbers, images, output)
    quiet_other_ranks()  # under torchrun rank 0 alone logs; each rank joins the group on its own GPU
    init_distributed(resolve_device(cfg.device))
    plan = PipelineSpec.from_config(cfg).validate()
    start, end = images(cfg)
    kwargs = request_kwargs(cfg)
    rounding = cfg.get("frames_rounding", "error")
    request = validate_request(start, end, control=plan.control, sampler=plan.sampler_cls, frames_rounding=rounding,
                               **kwargs)  # fmt: skip
    kwargs["frames"] = request.frames  # rounded down if frames_rounding=down
    for strategy in plan.strategies:  # those that depend on the video size (parallel token split)
        getattr(strategy, "check_request", lambda request: None)(request)
    fps = check_fps(cfg.fps)
    overwrite = cfg.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite={overwrite!r} must be true or false")
    output = check_output_path(output_path(cfg), overwrite=overwrite)
    if guard is not None:
        guard.watch(output)
    log.info("request: %s -> %s", request, output)
    # 2. weights, components, strategies
    with main_process_first():  # one rank creates or downloads the checkpoint, the others find it
        resolve_checkpoint(plan.spec.model)
    pipe = build(plan)
    # 3. generate and write
    began = time.perf_counter()
    video = pipe(start, end, progress=bool(cfg.progress) and is_main_process(), **kwargs)
    seconds = time.perf_counter() - began
    if not is_main_process():  # every rank holds the same video; one writes it
        return 0
    written = write_video(video, output, fps=fps, overwrite=overwrite)
    log.info("wrote %s (%d frames, %dx%d) in %.1f s", written, video.shape[2], video.shape[4], video.shape[3], seconds)
    print(written)
    return 0
