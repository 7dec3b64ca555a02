"""Writing trained weights where inference reads them, atomically and never over a user's file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ruyi.errors import OutputError
from ruyi.io import atomic_file, umask_mode
from ruyi.models.loading import read_config, weight_files

TRANSFORMER = "transformer"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def refuse_existing(path: Path) -> None:
    if path.exists():
        raise OutputError(f"{path} already exists; pick a new output_dir (trained weights never replace a file)")


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, *, metadata: Mapping[str, str] | None = None) -> Path:
    """One safetensors file, written to a temporary name and renamed into place."""
    path = Path(path)
    refuse_existing(path)
    with atomic_file(path, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=dict(metadata or {}))
    return path


def stored_dtype(folder: Path) -> torch.dtype:
    """The dtype a checkpoint component stores its floating weights in (bf16 for Ruyi-Mini-7B)."""
    with safe_open(str(weight_files(folder)[0][0]), framework="pt") as f:
        for key in f.keys():
            tensor = f.get_slice(key)
            dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(tensor.get_dtype())
            if dtype is not None:
                return dtype
    return torch.float32


def save_transformer(state: Mapping[str, torch.Tensor], config: Mapping[str, object], folder: Path, *, dtype: torch.dtype) -> None:
    """``folder/config.json`` + ``folder/diffusion_pytorch_model.safetensors``: the layout the
    transformer's ``save_pretrained`` writes and its ``from_pretrained`` reads. ``save_pretrained``
    itself cannot be used: under FSDP the weights arrive as a state dict gathered on rank 0, and the
    export casts them to the checkpoint's own dtype without touching the trained model."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2))
    tensors = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()) for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS))
    os.chmod(folder / WEIGHTS, umask_mode(directory=False))  # safetensors creates it private (0600)


def export_checkpoint(state: Mapping[str, torch.Tensor], *, source: Path, folder: Path, dtype: torch.dtype | None = None) -> Path:
    """A complete checkpoint folder: ``source``'s components with the transformer replaced by ``state``
    (in ``dtype``, by default the dtype ``source`` stores). ``model.path=<folder>`` loads it."""
    source, folder = Path(source), Path(folder)
    refuse_existing(folder)
    dtype = dtype or stored_dtype(source / TRANSFORMER)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for entry in sorted(source.iterdir()):
            if entry.name == TRANSFORMER or entry.name.startswith("."):
                continue
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        save_transformer(state, read_config(source / TRANSFORMER), tmp / TRANSFORMER, dtype=dtype)
        # the copies are the user's new files: plain modes, not the source's (a read-only download)
        for entry in (tmp, *tmp.rglob("*")):
            os.chmod(entry, umask_mode(directory=entry.is_dir()))
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
