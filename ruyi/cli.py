"""The body of ``scripts/infer.py``: validate everything, build through the assembly, run, write.

A user error (:class:`ruyi.errors.RuyiUserError`) ends as one line on stderr and exit code 2,
found before any weights load where possible, and never leaves a partial output file. Any other
exception is a bug: it propagates with its traceback (exit 1).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from ruyi.assembly import PipelineSpec, build, resolve_device
from ruyi.errors import RuyiUserError
from ruyi.io import check_output_path, procedural_image, write_video
from ruyi.parallel import init_distributed, is_main_process, main_process_first, quiet_other_ranks, shutdown
from ruyi.pipeline import validate_request
from ruyi.weights import resolve_checkpoint

log = logging.getLogger("ruyi")

EXIT_USAGE = 2
# the lowest-memory setting measured so far (benchmarks/RESULTS.md, H100, real 7B shape)
OOM_HINT = (
    "out of GPU memory; the lowest-memory setting measured is `offload=group skip_steps=1 vae_tile_size=512` "
    "(768x768x120 frames in 12.2 GiB); or lower frames / base_resolution"
)


def request_kwargs(cfg: DictConfig) -> dict[str, Any]:
    video_size = cfg.video_size
    return dict(
        frames=cfg.frames, base_resolution=cfg.base_resolution,
        video_size=None if video_size is None else list(video_size), steps=cfg.steps, cfg=cfg.cfg, seed=cfg.seed,
        camera=cfg.camera, motion=str(cfg.motion),
    )  # fmt: skip


def images(cfg: DictConfig):
    start = to_absolute_path(cfg.image) if cfg.image is not None else procedural_image()
    end = to_absolute_path(cfg.end_image) if cfg.end_image is not None else None
    return start, end


def run(cfg: DictConfig) -> int:
    """Generate one video as the config says; returns the process exit code."""
    try:
        return _run(cfg)
    except RuyiUserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except torch.OutOfMemoryError:
        print(f"error: {OOM_HINT}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        shutdown()  # torchrun: every rank leaves the process group


def _run(cfg: DictConfig) -> int:
    # 1. validate everything that needs no weights
    quiet_other_ranks()  # under torchrun rank 0 alone logs; each rank joins the group on its own GPU
    init_distributed(resolve_device(cfg.device))
    plan = PipelineSpec.from_config(cfg).validate()
    start, end = images(cfg)
    request = validate_request(start, end, control=plan.control, sampler=plan.sampler_cls, **request_kwargs(cfg))
    for strategy in plan.strategies:  # those that depend on the video size (parallel token split)
        getattr(strategy, "check_request", lambda request: None)(request)
    output = check_output_path(to_absolute_path(cfg.output))
    log.info("request: %s", request)
    # 2. weights, components, strategies
    with main_process_first():  # one rank creates or downloads the checkpoint, the others find it
        resolve_checkpoint(plan.spec.model)
    pipe = build(plan)
    # 3. generate and write
    began = time.perf_counter()
    video = pipe(start, end, progress=bool(cfg.progress) and is_main_process(), **request_kwargs(cfg))
    seconds = time.perf_counter() - began
    if not is_main_process():  # every rank holds the same video; one writes it
        return 0
    written = write_video(video, output, fps=int(cfg.fps))
    log.info("wrote %s (%d frames, %dx%d) in %.1f s", written, video.shape[2], video.shape[4], video.shape[3], seconds)
    print(written)
    return 0
