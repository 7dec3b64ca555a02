"""Build pipeline components by registry name (Python API) or from a composed Hydra config.

Both paths end in the same calls: a model class + a checkpoint folder -> ``load_model``; a sampler
class + the checkpoint's scheduler config -> a sampler.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch

from ruyi.models.loading import load_component, read_config
from ruyi.registry import ALL_REGISTRIES, IMAGE_ENCODERS, OFFLOADS, PRECISIONS, SAMPLERS, TRANSFORMERS, VAES, Registry

log = logging.getLogger(__name__)

BUILTIN_MODULES = (
    "ruyi.models.transformer",
    "ruyi.models.vae",
    "ruyi.models.image_encoder",
    "ruyi.samplers",
    "ruyi.conditioning",
    "ruyi.offload",
    "ruyi.plugins",
)

DEFAULT_MODELS = {"transformer": "ruyi_transformer3d", "vae": "magvit", "image_encoder": "clip_vision"}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


def import_builtins() -> dict[str, Registry[type]]:
    """Import the built-in component modules so that their registrations run."""
    from ruyi.registry import load_builtins

    load_builtins()
    return ALL_REGISTRIES


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}") from None


def load_model(cls: type, root: str | Path, *, dtype: torch.dtype | None = None, subfolder: str | None = None):
    """Load model class ``cls`` from ``root/<subfolder>`` (the class's own ``subfolder`` by default)."""
    folder = Path(root) / (subfolder or cls.subfolder)
    custom = getattr(cls, "from_pretrained", None)
    if custom is not None:
        return custom(folder, dtype=dtype)
    return load_component(cls, folder, config_overrides=getattr(cls, "config_overrides", None), dtype=dtype)


def build_models(root: str | Path, *, dtype: torch.dtype | None = None, names: dict[str, str] | None = None):
    """``{"transformer": ..., "vae": ..., "image_encoder": ...}`` loaded from a checkpoint folder."""
    import_builtins()
    names = {**DEFAULT_MODELS, **(names or {})}
    registries = {"transformer": TRANSFORMERS, "vae": VAES, "image_encoder": IMAGE_ENCODERS}
    return {kind: load_model(registries[kind].get(names[kind]), root, dtype=dtype) for kind in registries}


def build_sampler(name: str, root: str | Path, **kwargs: Any):
    import_builtins()
    return SAMPLERS.get(name)(scheduler_config=read_config(Path(root) / "scheduler", "scheduler_config.json"), **kwargs)


def build_offload(name: str, **kwargs: Any):
    import_builtins()
    return OFFLOADS.get(name)(**kwargs)


def build_precision(name: str, **kwargs: Any):
    import_builtins()
    return PRECISIONS.get(name)(**kwargs)


def attach_strategies(
    pipe, *, precision, offload, skip_steps: int, device: torch.device, vae_tile_size: int = 0,
    vae_tile_overlap: int = 96, plugins: Sequence[Any] = (), parallel=None,
) -> None:
    """Attach plugins, weight precision, long-skip parking, VAE tiling and an offload strategy.

    Order matters: plugins first (a LoRA merges into the weights as loaded), then FP8 storage (so
    offloading moves the small weights), then the skip stack, then device placement.
    """
    from ruyi.offload.skip_steps import apply_skip_offload
    from ruyi.plugins import attach_plugins

    attach_plugins(pipe, plugins)
    if not isinstance(skip_steps, int) or isinstance(skip_steps, bool) or skip_steps < 0:
        raise ValueError(f"skip_steps={skip_steps!r} must be an integer >= 0 (0 = off; the original offers 10, 7, 5, 1)")
    converted = precision.apply(pipe.transformer, pipe.dtype)
    if converted:
        log.info("%s: %d transformer layers stored in FP8", precision, converted)
    if parallel is not None:  # after LoRA merges and FP8 storage, before anything places weights
        parallel.apply(pipe)
    apply_skip_offload(pipe.transformer, skip_steps)
    if vae_tile_size:
        pipe.vae.enable_tiling(tile_sample_size=int(vae_tile_size), tile_overlap=int(vae_tile_overlap))
    offload.apply(pipe, device)


def load_pipeline(
    path: str | Path,
    *,
    sampler: str = "ddim",
    dtype: torch.dtype = torch.float32,
    offload: str = "none",
    offload_kwargs: dict[str, Any] | None = None,
    precision: str = "bf16",
    precision_kwargs: dict[str, Any] | None = None,
    skip_steps: int = 0,
    device: str | torch.device = "cpu",
    clip_apply_ratio: float = 0.4,
    plugins: Sequence[Any] = (),
    parallel: Any = "none",
    parallel_kwargs: dict[str, Any] | None = None,
):
    """A ready ``RuyiPipeline`` from a checkpoint folder, every component chosen by registry name
    (``parallel`` also takes a built strategy, e.g. ``UlyssesParallel(cfg=2)``)."""
    from ruyi.conditioning import CameraMotionControl, StartEndFrames
    from ruyi.pipeline import RuyiPipeline

    from ruyi.parallel import ParallelFacts, init_distributed
    from ruyi.registry import PARALLELS

    path = Path(path)
    device = init_distributed(torch.device(device))  # under torchrun: this rank's GPU
    parallel_strategy = PARALLELS.get(parallel)(**(parallel_kwargs or {})) if isinstance(parallel, str) else parallel
    parallel_strategy.check(ParallelFacts(device=device, offload=offload, precision=precision, model_path=path))
    pipe = RuyiPipeline(
        **build_models(path, dtype=dtype),
        sampler=build_sampler(sampler, path),
        image_conditioning=StartEndFrames(clip_apply_ratio=clip_apply_ratio),
        control=CameraMotionControl(),
        model_path=path,
        dtype=dtype,
    )
    attach_strategies(
        pipe, precision=build_precision(precision, **(precision_kwargs or {})), offload=build_offload(offload, **(offload_kwargs or {})),
        skip_steps=skip_steps, device=device, plugins=plugins, parallel=parallel_strategy,
    )  # fmt: skip
    return pipe
