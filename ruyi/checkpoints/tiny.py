"""Create the embedded tiny checkpoint: random weights of the real architecture, in the real layout.

The result is a folder the normal loader reads (config.json + safetensors per component, written
by each model's ``save_pretrained`` with the original's class names, ``embeddings.safetensors``,
``scheduler/``, ``model_index.json``), so the default CPU run exercises exactly the code path of
the 17 GB Ruyi-Mini-7B.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ruyi.conditioning.control import random_control_table
from ruyi.errors import CheckpointError
from ruyi.io import publish_folder
from ruyi.models.loading import quiet_progress
from ruyi.registry import TRANSFORMERS, VAES

log = logging.getLogger(__name__)

# the architecture of Ruyi-Mini-7B, whatever the configs select for a run
MODELS = {"transformer": (TRANSFORMERS, "ruyi_transformer3d"), "vae": (VAES, "magvit")}


def create_tiny_checkpoint(path: str | Path, preset: Mapping[str, Any]) -> Path:
    """Write the checkpoint described by a ``ruyi_tiny``-style preset to ``path`` (atomically)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ruyi.models.image_encoder import CLIPImageProcessor

    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        # never replace what is there: it may be the user's (a complete tiny checkpoint is never rebuilt)
        raise CheckpointError(
            f"{path} exists and is not a checkpoint; move it away or set model.path elsewhere"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        torch.manual_seed(int(preset.get("seed", 0)))
        with quiet_progress():
            for kind, (registry, name) in MODELS.items():
                name = dict(preset.get("components") or {}).get(kind, name)  # e.g. {vae: pixel_patch}
                # config fields the class does not take are kept and saved: the folder mirrors the real one
                model = registry.get(name).from_config(dict(preset[f"{kind}_arch"]))
                model.save_pretrained(tmp / kind, safe_serialization=True)
            clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**preset["image_encoder_arch"]))
            clip.save_pretrained(tmp / "image_encoder", safe_serialization=True)
        CLIPImageProcessor(**preset["image_processor"]).save_pretrained(tmp / "image_encoder")
        (tmp / "scheduler").mkdir()
        scheduler = {"_class_name": "DDPMScheduler", **preset["scheduler_config"]}
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
        generator = torch.Generator().manual_seed(int(preset.get("seed", 0)))
        save_file(
            random_control_table(preset["transformer_arch"], generator),
            str(tmp / "embeddings.safetensors"),
        )
        (tmp / "model_index.json").write_text(json.dumps({"_class_name": "RuyiInpaintPipeline"}, indent=2))
        publish_folder(tmp, path)  # only into a new or empty folder; ordinary modes (safetensors writes 0600)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("created the tiny checkpoint at %s", path)
    return path
