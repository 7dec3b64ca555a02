"""Where a pipeline's weights come from: a checkpoint folder (found, created or downloaded), or
random numbers at a preset's real shape (benchmarks need no 17 GB download).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ruyi.errors import CheckpointError, MissingWeightsError
from ruyi.models.in_place import WeightsHome, load_in_place
from ruyi.models.loading import load_model, quiet_progress, random_model, read_config

if TYPE_CHECKING:
    from ruyi.components import ModelSource

log = logging.getLogger(__name__)

CHECKPOINT_PARTS = ("transformer", "vae", "image_encoder", "scheduler", "embeddings.safetensors")
DOWNLOAD_COMMAND = "hf download {repo} --local-dir {path}"


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and all((path / part).exists() for part in CHECKPOINT_PARTS)


def resolve_checkpoint(source: ModelSource) -> Path:
    """The checkpoint folder: found, created (the tiny preset), downloaded (``download``) or a clear error.

    Data safety: the tiny checkpoint is only created where nothing exists yet or in an empty
    folder, and a download only goes into a new or empty folder or one that already holds part of
    the checkpoint (a resumed download). Any other existing path is the user's and is left alone:
    the error names what a checkpoint folder is missing.
    """
    if source.path is None:
        raise CheckpointError("no model path given; pass the checkpoint folder (model.path=...)")
    path = Path(source.path).expanduser()
    if is_checkpoint(path):
        return path
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"model.path={path} is a file; point it at the checkpoint folder")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    partial_download = source.download and any(name in CHECKPOINT_PARTS or name == ".cache" for name in entries)
    if entries and not partial_download:
        missing = [part for part in CHECKPOINT_PARTS if part not in entries]
        raise CheckpointError(
            f"model.path={path} exists but is not a Ruyi checkpoint (missing: {', '.join(missing)}); "
            "point model.path at the checkpoint folder, or at a new or empty folder for the tiny model"
        )
    if source.create_if_missing and not partial_download:
        from ruyi.checkpoints.tiny import create_tiny_checkpoint

        if source.arch is None:
            raise CheckpointError(f"cannot create a checkpoint at {path}: the preset has no architecture")
        log.info("creating the tiny checkpoint at %s (first use)", path)
        return create_tiny_checkpoint(path, source.arch)
    if source.repo_id:
        hint = (
            f"{source.name} weights not found at {path}; download them with "
            f"`{DOWNLOAD_COMMAND.format(repo=source.repo_id, path=path)}` "
            "(or pass download=true), or point model.path at your copy"
        )
    else:  # nothing to download from (a trained or local-only preset): its recipe, if the preset names one
        recipe = (source.arch or {}).get("made_by")
        how = f"make them with `{recipe}`" if recipe else "README says how to make them"
        hint = f"{source.name} weights not found at {path}; {how}, or point model.path at your copy"
    if not source.download or not source.repo_id:
        raise MissingWeightsError(hint)
    try:
        from huggingface_hub import snapshot_download

        log.info("downloading %s to %s", source.repo_id, path)
        snapshot_download(repo_id=source.repo_id, local_dir=str(path))
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same actionable message
        raise MissingWeightsError(f"download failed ({type(err).__name__}); {hint}") from None
    return path


def load_models(
    classes: Mapping[str, type], path: Path, *, dtype: torch.dtype, homes: Mapping[str, WeightsHome | None] | None = None
) -> dict[str, torch.nn.Module]:
    """``{kind: model}`` for each ``{kind: class}``, read from ``path/<class.subfolder>``. Every
    component's ``config.json`` is checked (bounds, headers) before the first one loads: a damaged
    VAE config must not wait for a 14 GB transformer. A model with a home in ``homes`` (the
    placement's ``weights_home``) is read straight into it, the others through ``from_pretrained``."""
    from ruyi.models.config_checks import check_model_config

    for cls in classes.values():
        folder = path / cls.subfolder
        if folder.is_dir():  # a missing folder is load_model's error, with the fix
            check_model_config(cls, read_config(folder), folder)
    models = {}
    for kind, cls in classes.items():
        home = (homes or {}).get(kind)
        if home is None or getattr(cls, "_keep_in_fp32_modules", None):  # from_pretrained's rules for those
            log.info("loading %s %s from %s", kind, cls.__name__, path / cls.subfolder)
            models[kind] = load_model(cls, path, dtype=dtype)
            continue
        where = "group files" if home.group_files else "pinned memory" if home.pin else "memory"
        log.info("loading %s %s from %s straight into %s", kind, cls.__name__, path / cls.subfolder, where)
        with quiet_progress():
            models[kind] = load_in_place(cls, path, dtype=dtype, home=home)
    return models


def scheduler_config(path: Path) -> dict[str, Any]:
    return read_config(path / "scheduler", "scheduler_config.json")


def random_models(
    classes: Mapping[str, type], arch: Mapping[str, Any], *, dtype: torch.dtype, device: torch.device, home: torch.device
) -> tuple[dict[str, torch.nn.Module], dict[str, torch.Tensor]]:
    """Models of ``arch``'s real shape with random weights, made on ``device`` and left on ``home``,
    plus a random control-embedding table with every key the real one has."""
    from ruyi.models.image_encoder import random_image_encoder
    from ruyi.conditioning.control import random_control_table

    transformer = random_model(classes["transformer"], arch["transformer_arch"], dtype=dtype, device=device)
    vae = random_model(classes["vae"], arch.get("vae_arch") or {}, dtype=dtype, device=device, seed=1)
    encoder = random_image_encoder(
        arch["image_encoder_arch"], arch["image_processor"], dtype=dtype, device=device, seed=2
    )
    table = random_control_table(arch["transformer_arch"], torch.Generator().manual_seed(3))
    models = {"transformer": transformer.to(home), "vae": vae.to(home), "image_encoder": encoder.to(home)}
    return models, table
