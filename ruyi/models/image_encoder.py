"""The CLIP vision encoder of the checkpoint's ``image_encoder/`` folder, through ``transformers``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import init_empty_weights
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

try:  # transformers >= 5: the PIL backend gives the original's numbers without torchvision
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import CLIPImageProcessor

from ruyi.models.config_checks import check_model_config
from ruyi.models.loading import check_weights, randomize, read_config
from ruyi.registry import IMAGE_ENCODERS

# transformers rebuilds this non-persistent buffer itself; older exports also stored it
POSITION_IDS = "vision_model.embeddings.position_ids"


class PixelValues:
    """An image encoder's preprocessing alone (resize, centre crop, normalise): ``(H, W, 3)`` or
    ``(B, H, W, 3)`` uint8 -> ``pixel_values (B, 3, S, S)``. Holds no weights and pickles, so the
    training's DataLoader workers run it."""

    def __init__(self, processor: CLIPImageProcessor) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"]


@IMAGE_ENCODERS.register("clip_vision")
class CLIPImageEncoder(torch.nn.Module):
    """Start image -> CLIP patch features that the transformer attends to.

    ``forward(pixel_values (B, 3, S, S)) -> features (B, (S/patch)^2, hidden)``: the vision
    model's last hidden state without the class token.
    """

    subfolder = "image_encoder"

    def __init__(self, *, vision: CLIPVisionModelWithProjection, processor: CLIPImageProcessor) -> None:
        super().__init__()
        self.vision = vision
        self.processor = processor
        self.pixel_values = PixelValues(processor)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, dtype: torch.dtype | None = None) -> "CLIPImageEncoder":
        """``config.json``, ``preprocessor_config.json`` and the safetensors of ``folder``, the
        headers checked before transformers loads them; ``dtype`` None: transformers' default."""
        folder = Path(folder)
        raw = read_config(folder)
        check_model_config(cls, raw, folder)  # sane sizes that fit the headers, before any module is built
        config = CLIPVisionConfig(**raw)
        processor = CLIPImageProcessor(**read_config(folder, "preprocessor_config.json"))
        with torch.device("meta"):
            skeleton = CLIPVisionModelWithProjection(config)
        check_weights(folder, skeleton.state_dict(), ignore_unexpected={POSITION_IDS})
        vision = CLIPVisionModelWithProjection.from_pretrained(folder, config=config, use_safetensors=True)
        if dtype is not None:  # cast here: transformers 4.x and 5.x spell the dtype argument differently
            vision = vision.to(dtype)
        return cls(vision=vision.eval().requires_grad_(False), processor=processor)

    @property
    def hidden_size(self) -> int:
        return self.vision.config.hidden_size

    def preprocess(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """An RGB image (H, W, 3) -> ``pixel_values (1, 3, S, S)`` (resize, crop, normalise)."""
        return self.pixel_values(image)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # dtype only: under an offload hook the weights' device is not where the model runs
        hidden = self.vision(pixel_values=pixel_values.to(dtype=next(self.vision.parameters()).dtype)).last_hidden_state
        return hidden[:, 1:]


def random_image_encoder(
    arch: Mapping[str, Any],
    image_processor: Mapping[str, Any],
    *,
    dtype: torch.dtype,
    device: str | torch.device,
    seed: int = 0,
) -> CLIPImageEncoder:
    """A CLIP encoder of ``arch`` (a vision ``config.json``) with N(0, 0.02) weights made on ``device``."""
    with init_empty_weights():  # parameters on meta; position_ids is a real (non-persistent) buffer
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**arch))
    vision = randomize(vision, dtype=dtype, device=device, seed=seed)
    return CLIPImageEncoder(vision=vision, processor=CLIPImageProcessor(**image_processor))
