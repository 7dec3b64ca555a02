"""CFG parallelism: the negative and positive halves of the guidance batch on different ranks.

A diffusers hook on the transformer takes this rank's half of every batched input and gathers the
halves of the output afterwards, so the denoising loop still sees the whole [negative; positive]
prediction and every rank computes the same guided step.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks import ModelHook

from ruyi.hooks import ModuleHooks
from ruyi.parallel.groups import ParallelGroups

log = logging.getLogger(__name__)

HOOK = "ruyi_parallel_cfg"  # the hook's name in the transformer's HookRegistry


class CfgSplit(ModelHook):
    """Attach with ``attach(transformer)``, take off with ``detach()``.

    A batch that does not split evenly (guidance off: batch 1) runs whole on every rank, so the
    result stays right; the cfg ranks then duplicate work, which is logged once.
    """

    def __init__(self, groups: ParallelGroups) -> None:
        super().__init__()
        self.groups = groups
        self._hooks = ModuleHooks(HOOK)
        self._split = False
        self._warned = False

    def __repr__(self) -> str:
        return f"CfgSplit({self.groups.degrees})"

    def attach(self, transformer: torch.nn.Module) -> CfgSplit:
        self._hooks.register(transformer, self)
        return self

    def detach(self) -> None:
        self._hooks.remove()

    def pre_forward(self, module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        batch = (args[0] if args else kwargs["hidden_states"]).shape[0]
        parts = self.groups.degrees.cfg
        self._split = batch % parts == 0
        if not self._split:
            if not self._warned:
                log.warning("batch %d does not split over %d cfg ranks (guidance off?): each computes it whole", batch, parts)
                self._warned = True
            return args, kwargs
        index = self.groups.cfg_rank

        def take(value: Any) -> Any:
            # every batched input has the batch first; the rotary tables (a tuple) are per token
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
                return value.chunk(parts)[index]
            return value

        return tuple(take(a) for a in args), {k: take(v) for k, v in kwargs.items()}

    def post_forward(self, module, output: torch.Tensor) -> torch.Tensor:
        if not self._split:
            return output
        output = output.contiguous()
        pieces = [torch.empty_like(output) for _ in range(self.groups.degrees.cfg)]
        dist.all_gather(pieces, output, group=self.groups.cfg_group)
        return torch.cat(pieces)
