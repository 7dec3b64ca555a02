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

from ruyi.components import parse_dtype
from ruyi.models.image_encoder import random_image_encoder
from ruyi.models.loading import random_model
from ruyi.models.tiny import random_control_embeddings
from ruyi.pipeline import RuyiPipeline


def build_random_pipeline(cfg: DictConfig, init_device: torch.device, home: str) -> RuyiPipeline:
    """Random-weight pipeline for the composed config; weights are created on ``init_device``
    and left on ``home`` (``cpu`` for offload strategies, which then stream them)."""
    dtype = parse_dtype(cfg.dtype)
    arch: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)
    made = {"dtype": dtype, "device": init_device}
    transformer = random_model(get_class(cfg.transformer._target_), arch["transformer_arch"], **made).to(home)
    vae = random_model(get_class(cfg.vae._target_), arch.get("vae_arch") or {}, seed=1, **made).to(home)
    encoder = random_image_encoder(arch["image_encoder_arch"], arch["image_processor"], seed=2, **made).to(home)
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
