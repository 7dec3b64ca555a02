"""Blocks streamed from CPU RAM in groups, prefetched on a side CUDA stream (diffusers' hooks).

Between ``model`` (whole models in and out) and ``sequential`` (every leaf, synchronously): with
``use_stream`` the next group's weights are copied from pinned memory while the current group
computes, so transfers hide behind compute.
"""

from __future__ import annotations

import torch
from diffusers.hooks import apply_group_offloading

from ruyi.errors import ConfigError
from ruyi.placement.base import AcceleratorRequired, Offloadable, OffloadStrategy, offload_units
from ruyi.registry import OFFLOADS


@OFFLOADS.register("group")
class GroupOffload(OffloadStrategy):
    loads_per_block = True

    def __init__(self, *, blocks_per_group: int = 1, use_stream: bool = True, record_stream: bool = True) -> None:
        if blocks_per_group < 1:
            raise ConfigError(f"offload.blocks_per_group={blocks_per_group} must be >= 1")
        self.blocks_per_group = blocks_per_group
        self.use_stream = use_stream
        self.record_stream = record_stream

    def __repr__(self) -> str:
        return f"GroupOffload(blocks_per_group={self.blocks_per_group}, use_stream={self.use_stream})"

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
        for model in pipe.modules.values():
            model.to("cpu")
            for unit in offload_units(model):
                self._attach(unit, device)

    def _attach(self, unit: torch.nn.Module, device: torch.device) -> None:
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
        )

    def remove(self, pipe: Offloadable) -> None:
        from diffusers.hooks import HookRegistry

        for module in pipe.modules.values():
            for sub in module.modules():
                registry = getattr(sub, "_diffusers_hook", None)
                if isinstance(registry, HookRegistry):
                    for name in list(registry.hooks):
                        registry.remove_hook(name, recurse=False)
        super().remove(pipe)
