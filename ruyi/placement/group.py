"""Blocks streamed from CPU RAM in groups, prefetched on a side CUDA stream (diffusers' hooks).

Between ``model`` (whole models in and out) and ``sequential`` (every leaf, synchronously): with
``use_stream`` the next group's weights are copied from pinned memory while the current group
computes, so transfers hide behind compute.

Host RAM (what a 16 GB PC has): by default diffusers keeps a pinned copy of every streamed weight
beside the loaded one, two copies of the 7B's 13.4 GiB. ``low_cpu_mem_usage=true`` keeps one
(pinned on the fly per transfer); ``disk=true`` writes each group once to a folder of its own and
reads it back per use, so the weights leave RAM altogether (the operating system's file cache still
helps when RAM is free). That folder is made fresh for the run (never a stale group file of another
model) and removed with the placement or at exit.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers.hooks import apply_group_offloading

from ruyi.errors import ConfigError
from ruyi.placement.base import AcceleratorRequired, Offloadable, OffloadStrategy, offload_units
from ruyi.registry import OFFLOADS


@OFFLOADS.register("group")
class GroupOffload(OffloadStrategy):
    loads_per_block = True

    def __init__(
        self, *, blocks_per_group: int = 1, use_stream: bool = True, record_stream: bool = True,
        low_cpu_mem_usage: bool = False, disk: bool = False, disk_dir: str | None = None,
    ) -> None:  # fmt: skip
        if blocks_per_group < 1:
            raise ConfigError(f"offload.blocks_per_group={blocks_per_group} must be >= 1")
        for key, value in (("low_cpu_mem_usage", low_cpu_mem_usage), ("disk", disk)):
            if not isinstance(value, bool):
                raise ConfigError(f"offload.{key}={value!r} must be true or false")
        self.blocks_per_group = blocks_per_group
        self.use_stream = use_stream
        self.record_stream = record_stream
        self.low_cpu_mem_usage = low_cpu_mem_usage
        self.disk = disk
        self.disk_dir = disk_dir  # where the run's own folder goes (None: ruyi's cache folder)
        self._folder: Path | None = None

    def __repr__(self) -> str:
        extra = ", low_cpu_mem_usage=True" if self.low_cpu_mem_usage else ""
        extra += f", disk={self._folder or True}" if self.disk else ""
        return f"GroupOffload(blocks_per_group={self.blocks_per_group}, use_stream={self.use_stream}{extra})"

    @property
    def host_copies(self) -> float:
        """Copies of the streamed weights kept in host RAM (read by memory=auto's host plan)."""
        return 0.0 if self.disk else 1.0 if self.low_cpu_mem_usage else 2.0

    def check(self, plan) -> None:
        super().check(plan)
        if self.disk and self.disk_dir is not None and not Path(self.disk_dir).expanduser().is_dir():
            raise ConfigError(f"offload.disk_dir={self.disk_dir} is not an existing folder; create it or leave it null")

    @property
    def needs_accelerator(self) -> bool:
        return self.use_stream

    def accelerator_hint(self, device: torch.device) -> str:
        return (
            f"offload=group with use_stream=true prefetches on a CUDA stream, but the device is {device}; "
            "run on a GPU or set offload.use_stream=false"
        )

    def apply(self, pipe: Offloadable) -> None:
        device = pipe.execution_device
        if self.needs_accelerator and device.type != "cuda":
            raise AcceleratorRequired(self.accelerator_hint(device))
        if self.disk:
            self._folder = self._make_folder()
        for model in pipe.modules.values():
            model.to("cpu")
            for index, unit in enumerate(offload_units(model)):
                self._attach(unit, device, folder=None if self._folder is None else self._folder / f"{type(model).__name__}{index}")

    def _make_folder(self) -> Path:
        from ruyi.compile_cache import ruyi_cache_root

        parent = Path(self.disk_dir).expanduser() if self.disk_dir else ruyi_cache_root() / "offload"
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=parent))  # this run's own: removed with it
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return folder

    def _attach(self, unit: torch.nn.Module, device: torch.device, *, folder: Path | None) -> None:
        # block-level groups need a ModuleList/Sequential child to stream; a plain layer is one group
        blocks = any(isinstance(c, (torch.nn.ModuleList, torch.nn.Sequential)) for c in unit.children())
        apply_group_offloading(
            unit,
            onload_device=device,
            offload_type="block_level" if blocks else "leaf_level",
            num_blocks_per_group=self.blocks_per_group if blocks else None,
            use_stream=self.use_stream,
            record_stream=self.record_stream and self.use_stream,
            non_blocking=self.use_stream,
            low_cpu_mem_usage=self.low_cpu_mem_usage,
            offload_to_disk_path=None if folder is None else str(folder),
        )

    def remove(self, pipe: Offloadable) -> None:
        from diffusers.hooks import HookRegistry

        if self._folder is not None:
            _read_back_from_disk(pipe)
        for module in pipe.modules.values():
            for sub in module.modules():
                registry = getattr(sub, "_diffusers_hook", None)
                if isinstance(registry, HookRegistry):
                    for name in [n for n in registry.hooks if _is_group_offloading(n)]:  # not the others' hooks
                        registry.remove_hook(name, recurse=False)
        super().remove(pipe)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _read_back_from_disk(pipe: Offloadable) -> None:
    """Weights written to disk by the group hooks back into the modules (CPU), before the folder goes."""
    from diffusers.hooks import HookRegistry
    from safetensors.torch import load_file

    for module in pipe.modules.values():
        for sub in module.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if not isinstance(registry, HookRegistry):
                continue
            for hook in registry.hooks.values():
                group = getattr(hook, "group", None)
                path = getattr(group, "safetensors_file_path", None)
                if path is not None and Path(path).is_file():
                    stored = load_file(path, device="cpu")
                    for key, tensor in group.key_to_tensor.items():
                        tensor.data = stored[key]


def _is_group_offloading(hook_name: str) -> bool:
    """diffusers names its group-offloading hooks (the group hook, lazy prefetch, layer tracker) so."""
    return "group_offloading" in hook_name or "layer_execution_tracker" in hook_name
