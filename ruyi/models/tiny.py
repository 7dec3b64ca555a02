"""Create the embedded tiny checkpoint: random weights of the real architecture, in the real layout.

The result is a folder the normal loader reads (config.json + safetensors per component,
``embeddings.safetensors``, ``scheduler/``, ``model_index.json``), so the default CPU run exercises
exactly the code path of the 17 GB Ruyi-Mini-7B.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ruyi.io import umask_mode

log = logging.getLogger(__name__)

CAMERAS = ("static", "left", "right", "up", "down", "auto")
MOTIONS = ("0", "1", "2", "3", "4")
CLASS_NAMES = {"transformer": "HunyuanTransformer3DModel", "vae": "AutoencoderKLMagvit"}


def _save_component(model: torch.nn.Module, config: Mapping[str, Any], folder: Path, class_name: str) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": class_name, **config}, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


def random_control_embeddings(arch: Mapping[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random ``embeddings.safetensors`` table with every key the real one has, for ``arch``'s sizes."""
    text_len, text_len_t5 = arch["text_len"], arch["text_len_t5"]
    dim, dim_t5 = arch["cross_attention_dim"], arch["cross_attention_dim_t5"]

    def entry(prefix: str) -> dict[str, torch.Tensor]:
        valid1 = int(torch.randint(1, text_len + 1, (1,), generator=generator))
        valid2 = int(torch.randint(1, text_len_t5 + 1, (1,), generator=generator))
        return {
            f"{prefix}.emb1": torch.randn(1, text_len, dim, generator=generator),
            f"{prefix}.mask1": (torch.arange(text_len) < valid1).long()[None],
            f"{prefix}.emb2": torch.randn(1, text_len_t5, dim_t5, generator=generator),
            f"{prefix}.mask2": (torch.arange(text_len_t5) < valid2).long()[None],
        }

    table = {**entry("p.default"), **entry("n.default")}
    for motion in MOTIONS:
        for camera in CAMERAS:
            table.update(entry(f"p.16x9movie{motion}{camera}"))
    return table


def create_tiny_checkpoint(path: str | Path, preset: Mapping[str, Any]) -> Path:
    """Write the checkpoint described by a ``ruyi_tiny``-style preset to ``path`` (atomically)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ruyi.components import DEFAULT_MODELS, import_builtins
    from ruyi.models.image_encoder import CLIPImageProcessor
    from ruyi.models.loading import constructor_kwargs
    from ruyi.registry import TRANSFORMERS, VAES

    import_builtins()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        torch.manual_seed(int(preset.get("seed", 0)))
        t_arch, v_arch = dict(preset["transformer_arch"]), dict(preset["vae_arch"])
        names = {**DEFAULT_MODELS, **dict(preset.get("components") or {})}  # e.g. {vae: pixel_patch}
        for name, registry, arch in (("transformer", TRANSFORMERS, t_arch), ("vae", VAES, v_arch)):
            cls = registry.get(names[name])
            model = cls(**constructor_kwargs(cls, arch))
            class_name = CLASS_NAMES[name] if names[name] == DEFAULT_MODELS[name] else cls.__name__
            _save_component(model, arch, tmp / name, class_name)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**preset["image_encoder_arch"]))
        clip.save_pretrained(tmp / "image_encoder", safe_serialization=True)
        CLIPImageProcessor(**preset["image_processor"]).save_pretrained(tmp / "image_encoder")
        (tmp / "scheduler").mkdir()
        scheduler = {"_class_name": "DDPMScheduler", **preset["scheduler_config"]}
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
        generator = torch.Generator().manual_seed(int(preset.get("seed", 0)))
        save_file(random_control_embeddings(t_arch, generator), str(tmp / "embeddings.safetensors"))
        (tmp / "model_index.json").write_text(json.dumps({"_class_name": "RuyiInpaintPipeline"}, indent=2))
        if path.exists():
            shutil.rmtree(path)
        os.chmod(tmp, umask_mode(directory=True))
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("created the tiny checkpoint at %s", path)
    return path
