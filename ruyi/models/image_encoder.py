"""The CLIP vision encoder of the checkpoint's ``image_encoder/`` folder, through ``transformers``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

try:  # transformers >= 5: the PIL backend gives the original's numbers without torchvision
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import CLIPImageProcessor

from ruyi.models.loading import CheckpointError, check_keys, check_tensors, load_state_dict, read_config
from ruyi.registry import IMAGE_ENCODERS


def restore_position_ids(vision: CLIPVisionModelWithProjection) -> None:
    """Recreate the non-persistent ``position_ids`` buffer after a meta-device build."""
    embeddings = vision.vision_model.embeddings
    if hasattr(embeddings, "position_ids"):
        device = embeddings.patch_embedding.weight.device
        embeddings.position_ids = torch.arange(embeddings.num_positions, device=device)[None]


@IMAGE_ENCODERS.register("clip_vision")
class CLIPImageEncoder(torch.nn.Module):
    """Start image -> CLIP patch features that the transformer attends to.

    ``forward(pixel_values (B, 3, S, S)) -> features (B, (S/patch)^2, hidden)``: the vision
    model's last hidden state without the class token.
    """

    _no_split_modules = ["CLIPEncoderLayer"]
    subfolder = "image_encoder"

    def __init__(self, *, vision: CLIPVisionModelWithProjection, processor: CLIPImageProcessor) -> None:
        super().__init__()
        self.vision = vision
        self.processor = processor

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, dtype: torch.dtype | None = None) -> "CLIPImageEncoder":
        """Load ``config.json``, ``preprocessor_config.json`` and the safetensors of ``folder``."""
        folder = Path(folder)
        config = CLIPVisionConfig(**read_config(folder))
        processor = CLIPImageProcessor(**read_config(folder, "preprocessor_config.json"))
        with torch.device("meta"):
            vision = CLIPVisionModelWithProjection(config)
        state = load_state_dict(folder)
        # transformers keeps position_ids as a non-persistent buffer; older exports stored it.
        state.pop("vision_model.embeddings.position_ids", None)
        check_keys(set(vision.state_dict()) - {"vision_model.embeddings.position_ids"}, set(state), str(folder))
        check_tensors(vision.state_dict(), state, folder)
        vision.load_state_dict(state, strict=False, assign=True)
        restore_position_ids(vision)
        meta = [n for n, t in vision.state_dict().items() if t.is_meta]
        if meta:
            raise CheckpointError(f"{folder}: tensors {meta[:5]} were not loaded")
        if dtype is not None:
            vision = vision.to(dtype)
        return cls(vision=vision.eval().requires_grad_(False), processor=processor)

    @property
    def num_tokens(self) -> int:
        cfg = self.vision.config
        return (cfg.image_size // cfg.patch_size) ** 2

    @property
    def hidden_size(self) -> int:
        return self.vision.config.hidden_size

    def preprocess(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """An RGB image (H, W, 3) -> ``pixel_values (1, 3, S, S)`` (resize, crop, normalise)."""
        return self.processor(images=image, return_tensors="pt")["pixel_values"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # dtype only: under an offload hook the weights' device is not where the model runs
        hidden = self.vision(pixel_values=pixel_values.to(dtype=next(self.vision.parameters()).dtype)).last_hidden_state
        return hidden[:, 1:]
