"""Whole models moved to the GPU only while used (the original's ``normal_mode``).

accelerate's chained CPU-offload hooks: running a model moves it in and moves the previous one out.
"""

from __future__ import annotations

from accelerate import cpu_offload_with_hook

from ruyi.placement.base import Offloadable, OffloadStrategy, offload_units
from ruyi.registry import OFFLOADS


@OFFLOADS.register("model")
class ModelOffload(OffloadStrategy):
    def apply(self, pipe: Offloadable) -> None:
        device = pipe.execution_device
        hook = None
        for model in pipe.modules.values():
            model.to("cpu")
            for unit in offload_units(model):
                _, hook = cpu_offload_with_hook(unit, device, prev_module_hook=hook)
