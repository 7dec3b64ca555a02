"""Classifier-free guidance: the batch holds the negative branch first, the positive second."""

from __future__ import annotations

import torch


def classifier_free_guidance(prediction: torch.Tensor, scale: float) -> torch.Tensor:
    """``prediction (2B, ...)`` as [negative; positive] -> ``(B, ...)`` guided by ``scale``."""
    negative, positive = prediction.chunk(2)
    return negative + scale * (positive - negative)
