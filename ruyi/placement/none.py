"""Everything on the execution device (the original's "80g" scripts)."""

from __future__ import annotations

from ruyi.placement.base import Offloadable, OffloadStrategy
from ruyi.registry import OFFLOADS


@OFFLOADS.register("none")
class NoOffload(OffloadStrategy):
    keeps_weights_on_device = True

    def apply(self, pipe: Offloadable) -> None:
        device = pipe.execution_device
        for module in pipe.modules.values():
            module.to(device)
