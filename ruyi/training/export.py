"""Writing trained weights where inference reads them, atomically and never over a user's file:
complete and flushed before they exist under their name, and a full disk is one line naming the
disk and the size (``ruyi.files``)."""

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

from ruyi.checkpoints.student import RECORD_FILE
from ruyi.errors import OutputError
from ruyi.files import atomic_file, fsync_path, make_parents, remove_created, umask_mode, write_error
from ruyi.io import publish_folder
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
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with atomic_file(path, suffix=".safetensors", what="the weights", needed=lambda: size, replace=False) as tmp:
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
    fsync_path(folder / WEIGHTS)


def export_checkpoint(
    state: Mapping[str, torch.Tensor] | None, *, source: Path, folder: Path, dtype: torch.dtype | None = None,
    files: Mapping[str, Mapping[str, torch.Tensor]] | None = None, extra_files: Mapping[str, str] | None = None,
) -> Path:
    """A complete checkpoint folder: ``source``'s components with the transformer replaced by ``state``
    (in ``dtype``, by default the dtype ``source`` stores; None: the source's, copied), each
    safetensors file of ``files`` (e.g. ``embeddings.safetensors``) written from its tensors instead
    of copied, plus ``extra_files`` ({name: text}, e.g. a distilled student's record).
    ``model.path=<folder>`` loads it."""
    source, folder = Path(source), Path(folder)
    refuse_existing(folder)
    dtype = dtype or stored_dtype(source / TRANSFORMER)
    files = dict(files or {})
    created = make_parents(folder.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for entry in sorted(source.iterdir()):
            if (entry.name == TRANSFORMER and state is not None) or entry.name in files or entry.name.startswith("."):
                continue
            if entry.name == RECORD_FILE and state is not None:
                continue  # a distilled student's record speaks for its weights: new weights bring their own, or none
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        if state is not None:
            save_transformer(state, read_config(source / TRANSFORMER), tmp / TRANSFORMER, dtype=dtype)
        for name, tensors in files.items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / name))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for entry in tmp.rglob("*"):
            if entry.is_file():
                fsync_path(entry)
        # the copies are the user's new files: plain modes, not the source's (a read-only download);
        # publish_folder refuses a folder that appeared meanwhile (another run) instead of replacing it
        publish_folder(tmp, folder)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(created)
        needed = _folder_bytes(source) + sum(v.numel() * dtype.itemsize for v in (state or {}).values())
        mapped = write_error(err, folder, what="the checkpoint", needed=needed)
        if mapped is not None:
            raise mapped from None
        raise
    return folder


def _folder_bytes(folder: Path) -> int:
    """The bytes of what the export copies from a checkpoint folder (all but its transformer)."""
    copied = [p for p in folder.iterdir() if p.name != TRANSFORMER and not p.name.startswith(".")]
    return sum(f.stat().st_size for p in copied for f in (p, *p.rglob("*")) if f.is_file())
