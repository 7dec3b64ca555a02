"""Layer-by-layer streaming from CPU RAM (the original's ``low_gpu_memory_mode``).

Least GPU memory, most transfer time: every leaf module's weights cross the bus at each call.
"""

from __future__ import annotations

from accelerate import cpu_offload

from ruyi.placement.base import Offloadable, OffloadStrategy
from ruyi.registry import OFFLOADS


@OFFLOADS.register("sequential")
class SequentialOffload(OffloadStrategy):
    def apply(self, pipe: Offloadable) -> None:
        device = pipe.execution_device
        for module in pipe.modules.values():
            module.to("cpu")
            preload = getattr(module, "_preload_module_classes", None)
            cpu_offload(module, execution_device=device, preload_module_classes=preload)
