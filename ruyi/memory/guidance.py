"""Classifier-free guidance as batch-1 passes instead of one batch-2 pass.

The denoising loop hands the transformer [negative; positive] in one batch; every activation is
then twice as large as one branch needs. This option runs the batch one item at a time and writes
the results into one output, so the loop, the guidance rule and the sampler see the same tensor.
Each item is computed on its own in any case (no layer mixes batch items), so the values are those
of the batched call up to the kernels' choice for another batch size.

``granularity``:

- ``block``: each transformer block runs item after item. Transients inside a block
  halve; the hidden state between blocks (and the long skips) stay batch 2. Weights streamed by
  ``offload=group`` cross the bus once per step, as without the option.
- ``transformer`` (default): the whole transformer runs once per item. Everything halves, long skips
  included, but streamed weights cross the bus twice per step: hidden behind compute for long
  videos, a cost for short ones.

Plugins that take statistics over the whole batch (TeaCache's step distance, Enhance-A-Video's
cross-frame factor) would see one branch at a time and change the result: they declare
``reads_whole_batch`` and the combination is refused before any weight loads.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import ModelHook

from ruyi.errors import ConfigError
from ruyi.hooks import ModuleHooks
from ruyi.memory.base import MemoryOption
from ruyi.registry import MEMORIES

GRANULARITIES = ("block", "transformer")


def one_item(value: Any, index: int, batch: int) -> Any:
    """Item ``index`` of a batched tensor (leading dim == batch); anything else unchanged.

    Tuples (the rotary tables, per token) and non-tensors pass through whole.
    """
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
        return value[index : index + 1]
    return value


def item_by_item(forward, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``forward(x (B, ...), ...)`` as B calls on single items, gathered into one (B, ...) output."""
    first = args[0] if args else kwargs["hidden_states"]
    batch = first.shape[0]
    if batch < 2:
        return forward(*args, **kwargs)
    out = None
    for i in range(batch):
        piece = forward(
            *(one_item(a, i, batch) for a in args), **{k: one_item(v, i, batch) for k, v in kwargs.items()}
        )
        if out is None:
            out = piece.new_empty((batch, *piece.shape[1:]))
        out[i : i + 1] = piece
        del piece
    return out


class ItemByItem(ModelHook):
    """A module's forward run on one batch item at a time (:func:`item_by_item`)."""

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return item_by_item(self.fn_ref.original_forward, *args, **kwargs)


@MEMORIES.register("cfg_split")
class GuidanceSplit(MemoryOption):
    splits_batch = True

    def __init__(self, *, granularity: str = "transformer") -> None:
        if granularity not in GRANULARITIES:
            raise ConfigError(f"memory.granularity={granularity!r} must be one of {', '.join(GRANULARITIES)}")
        self.granularity = granularity
        self._hooks = ModuleHooks("ruyi.memory.cfg_split")

    def check(self, plan) -> None:
        super().check(plan)
        coupled = [type(p).registry_name for p in plan.plugins if getattr(p, "reads_whole_batch", False)]
        if coupled:
            raise ConfigError(
                f"memory=cfg_split runs the guidance halves one after another, but {', '.join(coupled)} "
                "takes statistics over the whole batch; drop one of them"
            )

    def apply(self, pipe) -> None:
        transformer = pipe.transformer
        for module in transformer.blocks if self.granularity == "block" else [transformer]:
            self._hooks.register(module, ItemByItem())

    def remove(self, pipe) -> None:
        self._hooks.remove()
