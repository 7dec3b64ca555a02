"""A RuyiPipeline at a preset's real shape with random weights (``bench.weights=random``).

The 17 GB checkpoint is not needed to measure memory and time: shapes, dtypes and kernels are
those of Ruyi-Mini-7B; only the numbers in the weights are random.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from ruyi.components import parse_dtype
from ruyi.models.image_encoder import CLIPImageEncoder, CLIPImageProcessor, restore_position_ids
from ruyi.models.loading import build_empty
from ruyi.models.tiny import random_control_embeddings
from ruyi.pipeline import RuyiPipeline


@torch.no_grad()
def materialize(model: torch.nn.Module, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """Give a meta-device model random N(0, 0.02) weights, created on ``device`` (fast on a GPU)."""
    model = model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            tensor.normal_(0.0, 0.02, generator=generator)
    return model.to(dtype).eval().requires_grad_(False)


def build_random_pipeline(cfg: DictConfig, init_device: torch.device, home: str) -> RuyiPipeline:
    """Random-weight pipeline for the composed config; weights are created on ``init_device``
    and left on ``home`` (``cpu`` for offload strategies, which then stream them)."""
    dtype = parse_dtype(cfg.dtype)
    arch: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)
    transformer_cls = get_class(cfg.transformer._target_)
    vae_cls = get_class(cfg.vae._target_)
    transformer = materialize(build_empty(transformer_cls, arch["transformer_arch"]), dtype, init_device).to(home)
    vae = materialize(build_empty(vae_cls, arch.get("vae_arch") or {}), dtype, init_device, 1).to(home)
    with torch.device("meta"):
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**arch["image_encoder_arch"]))
    vision = materialize(vision, dtype, init_device, 2)
    restore_position_ids(vision)
    vision = vision.to(home)
    encoder = CLIPImageEncoder(vision=vision, processor=CLIPImageProcessor(**arch["image_processor"]))
    folder = Path(tempfile.mkdtemp(prefix="ruyi-random-"))
    save_file(random_control_embeddings(arch["transformer_arch"], torch.Generator().manual_seed(3)), str(folder / "embeddings.safetensors"))
    return RuyiPipeline(
        transformer=transformer,
        vae=vae,
        image_encoder=encoder,
        sampler=instantiate(cfg.sampler, scheduler_config=arch["scheduler_config"]),
        image_conditioning=instantiate(cfg.conditioning.image),
        control=instantiate(cfg.conditioning.control),
        model_path=folder,
        dtype=dtype,
    )
