"""The files diffusers' group offloading streams a model's weights from, named before it runs.

With ``offload_to_disk_path`` diffusers writes each group of weights once to
``group_<first 16 hex digits of sha256(group id)>.safetensors`` (keys ``tensor_<i>`` in the group's
order) and skips a file that already exists. Writing these files straight from the checkpoint
(``ruyi.models.in_place``) means the weights never all sit in RAM; for that the names and orders
here must be diffusers' own: ``tests/test_host_load.py`` compares them with the groups diffusers
builds and fails when they change, and :func:`check_group_files` compares them again after every
attach (a mismatch stops the run before a forward could read an unwritten file).

Only block-level groups are named (a model with a ``ModuleList``/``Sequential`` of blocks, as the
transformer); for leaf-level ones this returns None and diffusers writes its files itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ruyi.models.in_place import GroupFile
from ruyi.placement.base import offload_units

BLOCKS = (torch.nn.ModuleList, torch.nn.Sequential)


def unit_folder(model: torch.nn.Module, index: int) -> str:
    """The folder of a model's ``index``-th offload unit inside the run's folder."""
    return f"{type(model).__name__}{index}"


def block_group_files(model: torch.nn.Module, folder: Path, blocks_per_group: int) -> list[GroupFile] | None:
    """Every group file of ``model``'s offload units under ``folder``, or None when a unit's groups
    are leaf-level. Entries name tensors as ``model.state_dict()`` / ``named_buffers()`` do."""
    names = {id(t): n for n, t in (*model.named_parameters(), *model.named_buffers())}
    files = []
    for index, unit in enumerate(offload_units(model)):
        unit_files = _unit_files(unit, folder / unit_folder(model, index), blocks_per_group, names)
        if unit_files is None:
            return None
        files += unit_files
    return files


def _unit_files(unit: torch.nn.Module, folder: Path, per_group: int, names: dict[int, str]) -> list[GroupFile] | None:
    children = list(unit.named_children())
    if not any(isinstance(child, BLOCKS) for _, child in children):
        return None
    files, grouped, loose_modules = [], set(), []
    for name, child in children:
        if not isinstance(child, BLOCKS):
            loose_modules.append(child)
            continue
        for start in range(0, len(child), per_group):
            members = list(child[start : start + per_group])
            group_id = f"{name}_{start}_{start + len(members) - 1}"
            files.append(_file(folder, group_id, [t for m in members for t in _own(m)], names))
            grouped.update(f"{name}.{i}" for i in range(start, start + len(members)))
    loose_params = [t for n, t in unit.named_parameters() if not _inside(n, grouped)]
    loose_buffers = [t for n, t in unit.named_buffers() if not _inside(n, grouped)]
    if loose_modules or loose_params or loose_buffers:
        tensors = [t for m in loose_modules for t in _own(m)] + loose_params + loose_buffers
        files.append(_file(folder, f"{type(unit).__name__}_unmatched_group", tensors, names))
    return files


def _own(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def _inside(name: str, grouped: set[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:i]) in grouped for i in range(1, len(parts) + 1))


def _file(folder: Path, group_id: str, tensors: list[torch.Tensor], names: dict[int, str]) -> GroupFile:
    unique = list(dict.fromkeys(tensors))  # a tensor shared by two modules is stored once
    digest = hashlib.sha256(group_id.encode("utf-8")).hexdigest()[:16]
    entries = tuple((f"tensor_{i}", names[id(t)]) for i, t in enumerate(unique))
    return GroupFile(folder / f"group_{digest}.safetensors", entries)


def file_groups(model: torch.nn.Module) -> Iterator[Any]:
    """The groups of the diffusers group hooks on ``model``'s submodules that stream from a file."""
    from diffusers.hooks import HookRegistry

    for sub in model.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry):
            for hook in registry.hooks.values():
                group = getattr(hook, "group", None)
                if getattr(group, "safetensors_file_path", None) is not None:
                    yield group


def attached_group_files(model: torch.nn.Module) -> dict[str, dict[str, str]]:
    """``{file: {key: tensor name}}`` of the group hooks diffusers attached to ``model``."""
    names = {id(t): n for n, t in (*model.named_parameters(), *model.named_buffers())}
    return {str(g.safetensors_file_path): {key: names.get(id(t), "?") for key, t in g.key_to_tensor.items()}
            for g in file_groups(model)}  # fmt: skip


def check_group_files(model: torch.nn.Module, written: list[GroupFile]) -> None:
    """Raise when the groups diffusers attached are not the files written from the checkpoint."""
    expected = {str(f.path): dict(f.entries) for f in written}
    if attached_group_files(model) != expected:
        import diffusers

        raise RuntimeError(
            f"diffusers {diffusers.__version__} names or orders its group-offload files differently from "
            f"ruyi.placement.group_files; the weights of {type(model).__name__} written from the checkpoint "
            "would not be read (use offload.low_cpu_mem_usage=true instead of offload.disk until ruyi is updated)"
        )
