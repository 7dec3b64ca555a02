"""Lightning checkpoints written like every other ruyi file: complete before they exist.

Lightning's own ``TorchCheckpointIO`` writes through fsspec; a full disk then ends in a traceback,
and the file may be left truncated. Here the checkpoint goes to a temporary file beside its name,
is flushed, and is renamed into place; a full disk is one line naming the disk and the size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ruyi.files import atomic_file


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor inside nested dicts/lists (a checkpoint's size, near enough)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file beside the checkpoint, renamed into place when complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        with atomic_file(path, suffix=".ckpt.tmp", what="the training checkpoint", needed=lambda: tensor_bytes(checkpoint)) as tmp:
            # through a Python file: a full disk is then an OSError with its errno (torch's own
            # writer reports it as "basic_ios::clear: iostream error")
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
