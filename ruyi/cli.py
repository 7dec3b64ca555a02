"""The body of ``scripts/infer.py``: validate, make sure the weights are there, build, run, write.

Every user error ends as one line on stderr and exit code 2, before any weights are loaded where
possible, and never leaves a partial output file.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from ruyi.components import attach_strategies, import_builtins, load_model, parse_dtype
from ruyi.errors import MissingWeightsError
from ruyi.io import check_output_path, procedural_image, write_video
from ruyi.models.loading import CheckpointError, read_config
from ruyi.offload.base import AcceleratorRequired, resolve_device
from ruyi.parallel import ParallelFacts, init_distributed, is_main_process, main_process_first, quiet_other_ranks, shutdown
from ruyi.pipeline import RuyiPipeline, validate_request
from ruyi.plugins import Plugin, build_plugins, check_offload_compatible

log = logging.getLogger("ruyi")

EXIT_USAGE = 2
MODEL_KINDS = ("transformer", "vae", "image_encoder")


def _request_kwargs(cfg: DictConfig) -> dict[str, Any]:
    video_size = cfg.video_size
    return dict(
        frames=cfg.frames, base_resolution=cfg.base_resolution,
        video_size=None if video_size is None else list(video_size), steps=cfg.steps, cfg=cfg.cfg, seed=cfg.seed,
        camera=cfg.camera, motion=str(cfg.motion),
    )  # fmt: skip


def _images(cfg: DictConfig):
    start = to_absolute_path(cfg.image) if cfg.image is not None else procedural_image()
    end = to_absolute_path(cfg.end_image) if cfg.end_image is not None else None
    return start, end


def ensure_checkpoint(model_cfg: DictConfig, *, download: bool) -> Path:
    """The checkpoint folder: created (tiny preset), downloaded (download=true) or a clear error."""
    path = Path(to_absolute_path(model_cfg.path))
    if path.is_dir() and (path / "transformer").is_dir():
        return path
    if model_cfg.get("create_if_missing"):
        from ruyi.models.tiny import create_tiny_checkpoint

        log.info("creating the tiny checkpoint at %s (first use)", path)
        return create_tiny_checkpoint(path, OmegaConf.to_container(model_cfg, resolve=True))
    repo = model_cfg.get("repo_id")
    hint = (
        f"{model_cfg.name} weights not found at {path}; download them with "
        f"`huggingface-cli download {repo} --local-dir {model_cfg.path}` "
        f"(or pass download=true), or point model.path at your copy"
    )
    if not download or not repo:
        raise MissingWeightsError(hint)
    try:
        from huggingface_hub import snapshot_download

        log.info("downloading %s to %s", repo, path)
        snapshot_download(repo_id=repo, local_dir=str(path))
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same actionable message
        raise MissingWeightsError(f"download failed ({type(err).__name__}); {hint}") from None
    return path


def build_pipeline(
    cfg: DictConfig, path: Path, device: torch.device, plugins: Sequence[Plugin] = (), parallel=None
) -> RuyiPipeline:
    """Instantiate every component named by the composed config."""
    dtype = parse_dtype(cfg.dtype)
    models = {}
    for kind in MODEL_KINDS:
        cls = get_class(cfg[kind]._target_)
        log.info("loading %s %s from %s", kind, cls.__name__, path / cls.subfolder)
        models[kind] = load_model(cls, path, dtype=dtype)
    scheduler_config = read_config(path / "scheduler", "scheduler_config.json")
    sampler = instantiate(cfg.sampler, scheduler_config=scheduler_config)
    pipe = RuyiPipeline(
        **models,
        sampler=sampler,
        image_conditioning=instantiate(cfg.conditioning.image),
        control=instantiate(cfg.conditioning.control),
        model_path=path,
        dtype=dtype,
    )
    offload, precision = instantiate(cfg.offload), instantiate(cfg.precision)
    log.info("sampler %s, offload %s, precision %s, skip_steps %s, device %s, dtype %s",
             sampler, offload, precision, cfg.skip_steps, device, dtype)  # fmt: skip
    attach_strategies(
        pipe, precision=precision, offload=offload, skip_steps=cfg.skip_steps, device=device,
        vae_tile_size=cfg.vae_tile_size, vae_tile_overlap=cfg.vae_tile_overlap, plugins=plugins, parallel=parallel,
    )  # fmt: skip
    return pipe


def run(cfg: DictConfig) -> int:
    """Generate one video as the config says; returns the process exit code."""
    try:
        return _run(cfg)
    except (ValueError, KeyError, FileNotFoundError, CheckpointError, AcceleratorRequired) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except torch.OutOfMemoryError:
        print(
            "error: out of GPU memory; try offload=model or offload=sequential, fewer frames or a lower "
            "base_resolution",
            file=sys.stderr,
        )
        return EXIT_USAGE
    finally:
        shutdown()  # torchrun: leave the process group on every rank


def _run(cfg: DictConfig) -> int:
    import_builtins()
    # 1. validate everything that needs no weights
    start, end = _images(cfg)
    sampler_cls = get_class(cfg.sampler._target_)
    control = instantiate(cfg.conditioning.control)
    request = validate_request(start, end, control=control, sampler=sampler_cls, **_request_kwargs(cfg))
    output = check_output_path(to_absolute_path(cfg.output))
    parse_dtype(cfg.dtype)
    quiet_other_ranks()  # torchrun: rank 0 alone logs
    device = init_distributed(resolve_device(cfg.device))  # torchrun: join the group, take GPU LOCAL_RANK
    plugins = build_plugins(cfg)
    offload_name = getattr(get_class(cfg.offload._target_), "registry_name", "")
    check_offload_compatible(plugins, offload_name)
    parallel = instantiate(cfg.parallel)
    parallel.check(ParallelFacts(
        device=device, offload=offload_name, precision=get_class(cfg.precision._target_),
        model_path=to_absolute_path(cfg.model.path), height=request.height, width=request.width,
    ))  # fmt: skip
    log.info("request: %s", request)
    # 2. weights
    with main_process_first():  # one rank creates or downloads, the others find it
        path = ensure_checkpoint(cfg.model, download=bool(cfg.download))
    # 3. build and run
    pipe = build_pipeline(cfg, path, device, plugins, parallel)
    began = time.perf_counter()
    video = pipe(start, end, progress=bool(cfg.progress) and is_main_process(), **_request_kwargs(cfg))
    seconds = time.perf_counter() - began
    if not is_main_process():  # every rank holds the same video; one writes it
        return 0
    written = write_video(video, output, fps=int(cfg.fps))
    log.info("wrote %s (%d frames, %dx%d) in %.1f s", written, video.shape[2], video.shape[4], video.shape[3], seconds)
    print(written)
    return 0
