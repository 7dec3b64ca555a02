"""Training clips: registered datasets (``configs/data/<name>.yaml``) and the batch collation."""

from __future__ import annotations

import torch

from ruyi.errors import ConfigError
from ruyi.training.data.folder import ClipFolder
from ruyi.training.data.procedural import ProceduralPans

__all__ = ["ClipFolder", "ProceduralPans", "collate_clips"]


def collate_clips(items: list[dict]) -> dict:
    """Samples -> one batch: tensors stacked ("video": uint8 (B, 3, F, H, W), ...), other fields
    ("camera", "motion", "key", ...) as lists."""
    shapes = {tuple(item["video"].shape) for item in items}
    if len(shapes) > 1:
        raise ConfigError(
            f"one batch holds clips of different sizes {sorted(shapes)}; set data.video_size=[h,w] or batch_size=1"
        )
    return {
        field: torch.stack([item[field] for item in items]) if isinstance(value, torch.Tensor) else [item[field] for item in items]
        for field, value in items[0].items()
    }
