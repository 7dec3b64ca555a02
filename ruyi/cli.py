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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from ruyi.assembly import PipelineSpec, build, resolve_device
from ruyi.errors import ConfigError, OutputError, exit_code_of
from ruyi.eval.sweep import SweepEval, notes_of, peak_memory_gib, reset_peak_memory
from ruyi.files import OutputGuard
from ruyi.hydra_config import request_images, request_kwargs
from ruyi.io import check_fps, check_output_path, video_stream, write_video
from ruyi.multirun import is_multirun, named_by, refuse_replacing, swept_values
from ruyi.parallel import init_distributed, is_main_process, main_process_first, quiet_other_ranks, shutdown
from ruyi.pipeline import validate_request
from ruyi.checkpoints import resolve_checkpoint
from ruyi.checkpoints.student import check_student

log = logging.getLogger("ruyi")

# the lowest-memory setting measured so far (benchmarks/RESULTS.md, H100, real 7B shape)
OOM_HINT = (
    "out of GPU memory; memory=auto picks what fits this GPU (the lowest measured, `offload=group skip_steps=1 "
    "vae_tile_size=256 memory=combo`, runs 768x768x120 frames in 5.6 GiB), or lower frames / base_resolution"
)


def output_path(cfg: DictConfig) -> Path:
    """Where this job writes. In a Hydra multirun every job gets its own file, named by the values
    it sweeps (``outputs/ruyi_sampler=euler_steps=5.mp4``: ``ruyi.multirun``) unless ``output``
    interpolates something itself (``output='outputs/seed${seed}.mp4'``)."""
    output = cfg.output
    if output is None or not str(output).strip():
        raise OutputError("output is empty; give a path ending in .mp4, or a new folder for PNG frames")
    path = Path(to_absolute_path(str(output)))
    if is_multirun() and not OmegaConf.is_interpolation(cfg, "output"):
        path = named_by(path, swept_values())
    return path


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
    quiet_other_ranks()  # under torchrun rank 0 alone logs
    # the one place the process group is joined, each rank on its own GPU; validation reads WORLD_SIZE only
    init_distributed(resolve_device(cfg.device))
    plan = PipelineSpec.from_config(cfg).validate()
    start, end = request_images(cfg)
    kwargs = request_kwargs(cfg)
    rounding = cfg.get("frames_rounding", "error")
    request = validate_request(start, end, control=plan.control, sampler=plan.sampler_cls, frames_rounding=rounding,
                               **kwargs)  # fmt: skip
    kwargs["frames"] = request.frames  # rounded down if frames_rounding=down, or the input video's count
    check_student(plan, steps=request.steps)  # a distilled student's sampler and steps, from its record
    for strategy in plan.strategies:  # those that depend on the video size (parallel token split)
        getattr(strategy, "check_request", lambda request: None)(request)
    fps = check_fps(cfg.fps)
    overwrite = cfg.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite={overwrite!r} must be true or false")
    output = check_output_path(output_path(cfg), overwrite=overwrite)
    if guard is not None:
        guard.watch(output)
    if is_multirun():  # a sweep never replaces an earlier sweep's videos
        refuse_replacing(output, overwrite=overwrite)
    judge = SweepEval.from_config(cfg)  # eval=on: checked now; None when off
    segments = len(request.plan())
    if judge is not None and (cfg.get("keyframes") or cfg.get("video") is not None or segments > 1):
        raise ConfigError("eval=on judges start/end-frame videos of one segment; judge keyframes, video= and long videos "
                          "with python -m ruyi eval (--keyframe, --segment-frames) or benchmarks/keyframes.py")  # fmt: skip
    log.info("request: %s -> %s", request, output)
    # 2. weights, components, strategies
    with main_process_first():  # one rank creates or downloads the checkpoint, the others find it
        resolve_checkpoint(plan.spec.model)
    # 3. generate and write
    if segments > 1:  # segment by segment into the writer: a long video never sits in memory whole
        stream = video_stream(output, fps=fps, overwrite=overwrite) if is_main_process() else nullcontext(None)
        with stream as sink:
            _, seconds, _, _, _ = _generate(plan, start, end, kwargs, progress=bool(cfg.progress), sink=sink or discard)
        if not is_main_process():
            return 0
        log.info("wrote %s (%d frames in %d segments, %dx%d) in %.1f s", output, request.frames, segments,
                 request.width, request.height, seconds)  # fmt: skip
        print(output)
        return 0
    video, seconds, cpu_seconds, peak_gib, notes = _generate(plan, start, end, kwargs, progress=bool(cfg.progress))
    if not is_main_process():  # every rank holds the same video; one writes it
        return 0
    written = write_video(video, output, fps=fps, overwrite=overwrite)
    log.info("wrote %s (%d frames, %dx%d) in %.1f s", written, video.shape[2], video.shape[4], video.shape[3], seconds)
    print(written)
    # 4. eval=on: judged against the reference video of the same request (made once, cached)
    if judge is not None:
        judge.record(cfg, video, seconds=seconds, cpu_seconds=cpu_seconds, peak_gib=peak_gib, video_path=written,
                     notes=notes)  # fmt: skip
    return 0


def discard(video) -> None:
    """The sink of the ranks that do not write (every rank makes the same frames)."""


def _generate(plan, start, end, kwargs: dict[str, Any], *, progress: bool, sink=None):
    """The video (None with a ``sink``, which receives it segment by segment), its wall and CPU
    seconds, peak GPU memory and the extensions' notes; the pipeline is gone on return (an
    ``eval=on`` reference may need its memory)."""
    pipe = build(plan)
    reset_peak_memory(plan.device)
    began, cpu_began = time.perf_counter(), time.process_time()
    video = pipe(start, end, progress=progress and is_main_process(), sink=sink, **kwargs)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    return video, seconds, cpu_seconds, peak_memory_gib(plan.device), notes_of(pipe)
