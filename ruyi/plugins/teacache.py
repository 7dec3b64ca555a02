"""TeaCache: skip the transformer's block stack on calls whose timestep-modulated input barely moved.

Each model call TeaCache measures how far the first block's modulated input (its ``norm1`` of the
tokens and the timestep embedding) moved since the last fully computed call, rescales that
relative L1 distance with the original's polynomial, and accumulates it. While the sum stays below
``threshold`` the block stack is skipped and the residual it added last time is reused.

Its window counts as the original's counter does: transformer calls, starting over every
``steps`` calls (the user's steps). Samplers that evaluate once per step see one window; PNDM's
warm-up evaluates more often than it steps (13 calls for 4 steps), so its window starts over
within the run (calls 0-3, 4-7, 8-11, 12) and each window seeds the cache again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from ruyi.checks import check_int, check_number
from ruyi.errors import ConfigError
from ruyi.extension import Extension
from ruyi.registry import PLUGINS

log = logging.getLogger(__name__)

# fitted by the original for Ruyi-Mini-7B: rescaled distance = polyval(COEFFICIENTS, rel_l1)
COEFFICIENTS = (-7.51185620e03, 2.32931511e03, -2.25610663e02, 9.39902237e00, -7.43067848e-02)


@PLUGINS.register("teacache")
class TeaCache(Extension):
    """Attach with ``attach(pipe)``; after a run ``skipped_steps`` says how many model calls reused
    the cache and ``skipped`` which ones.

    Window positions ``< skip_start_steps`` and the last ``skip_end_steps`` always run the blocks.
    ``threshold=0`` never skips (the polynomial dips below zero for near-identical inputs, which
    would otherwise skip even at 0); 0.10 caches about 6-8 of 25 steps, 0.15 about 10-12.

    ``across_ranks`` (None, or set by ``ruyi.parallel``) averages the statistic's means over the
    processes that each hold part of the batch or tokens, so every rank takes the same branch.
    """

    stage = "plugins"

    # called outside their block's forward: strategies that load or gather weights per block keep them ready
    modules_called_directly: ClassVar[tuple[str, ...]] = ("blocks.0.norm1",)
    reads_whole_batch = True  # its statistic averages the whole CFG batch (memory=cfg_split refuses it)

    def __init__(
        self, *, threshold: float = 0.10, skip_start_steps: int = 1, skip_end_steps: int = 1, offload_cpu: bool = False
    ) -> None:
        self.threshold = check_number("teacache.threshold", threshold, low=0, hint="0.10 caches ~6-8 of 25 steps")
        self.skip_start_steps = check_int("teacache.skip_start_steps", skip_start_steps, low=1)
        self.skip_end_steps = check_int("teacache.skip_end_steps", skip_end_steps, low=1)
        self.offload_cpu = bool(offload_cpu)
        self.skipped_steps = 0
        self.skipped: list[int] = []  # model-call indices of the last run that reused the cache
        self._transformer: torch.nn.Module | None = None
        self.across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._reset(num_steps=0)

    def __repr__(self) -> str:
        return (f"TeaCache(threshold={self.threshold}, skip_start_steps={self.skip_start_steps}, "
                f"skip_end_steps={self.skip_end_steps}, offload_cpu={self.offload_cpu})")  # fmt: skip

    def _reset(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.call = 0
        self.step: int | None = None  # position in the window; None outside a loop: the blocks always run
        self._accumulated = 0.0
        self._previous_modulated: torch.Tensor | None = None
        self._residual: torch.Tensor | None = None

    # -- attachment --------------------------------------------------------------------------
    def check(self, plan) -> None:
        """TeaCache runs the first block's norm outside that block's forward: a strategy that
        loads a block's weights only inside its forward (``loads_per_block``) cannot serve it."""
        if plan.has("loads_per_block"):
            raise ConfigError(f"teacache does not work with offload={plan.spec.offload.name} yet; use offload=model or offload=sequential")

    def apply(self, pipe) -> None:
        transformer = pipe.transformer
        if transformer.blocks_runner is not None:
            raise ValueError(f"the transformer already has a blocks_runner ({transformer.blocks_runner!r}); detach it first")
        transformer.blocks_runner = self
        self._transformer = transformer
        pipe.callbacks.append(self)

    def remove(self, pipe) -> None:
        if pipe.transformer.blocks_runner is self:
            pipe.transformer.blocks_runner = None
        if self in pipe.callbacks:
            pipe.callbacks.remove(self)
        self._transformer = None
        self._reset(num_steps=0)

    # -- loop callbacks ----------------------------------------------------------------------
    def on_loop_begin(self, state) -> None:
        self._reset(num_steps=state.num_steps)
        self.skipped_steps, self.skipped = 0, []

    def on_step_begin(self, state) -> None:
        # the original's counter: it starts over every num_steps calls, and its window with it
        self.call, self.step = state.call, state.call % self.num_steps

    def on_loop_end(self, state) -> None:
        log.info("TeaCache skipped %d of %d model calls %s", self.skipped_steps, state.num_calls, self.skipped)
        self._reset(num_steps=0)  # drop the cached tensors between runs

    # -- the blocks runner -------------------------------------------------------------------
    def __call__(self, run_blocks: Callable[..., torch.Tensor], hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """hidden_states (B, F*h*w, D) -> run_blocks' output (B, F*h*w, D), computed or reused."""
        step = self.step
        first = self.skip_start_steps - 1  # the step that seeds the cache
        if step is None or step < first or step >= self.num_steps - self.skip_end_steps:
            return run_blocks(hidden_states, **kwargs)
        modulated = self.modulated_input(hidden_states, kwargs["temb"], kwargs["num_frames"])
        if step == first:
            self._accumulated = 0.0
        else:
            self._accumulated += self.rescaled_distance(modulated)
            if self.threshold > 0 and self._accumulated < self.threshold:
                self.skipped_steps += 1
                self.skipped.append(self.call)
                return hidden_states + self._residual.to(hidden_states.device)
            self._accumulated = 0.0
        self._previous_modulated = self._store(modulated)
        out = run_blocks(hidden_states, **kwargs)
        self._residual = self._store(out - hidden_states)
        return out

    def modulated_input(self, hidden_states: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        """What the first block's self-attention would see: (B, F*h*w, D)."""
        block = self._transformer.blocks[0]
        if block.t_embed is not None and num_frames != 1:
            hidden_states = block.t_embed(hidden_states, num_frames)
        return block.norm1(hidden_states, temb)

    def rescaled_distance(self, modulated: torch.Tensor) -> float:
        previous = self._previous_modulated.to(modulated.device)
        means = torch.stack([(modulated - previous).abs().mean(), previous.abs().mean()])
        if self.across_ranks is not None:
            means = self.across_ranks(means)
        rel_l1 = (means[0] / means[1]).item()
        return float(np.polyval(COEFFICIENTS, rel_l1))

    def _store(self, tensor: torch.Tensor) -> torch.Tensor:
        # offload_cpu trades a copy per computed step for not holding two activations on the GPU
        return tensor.to("cpu") if self.offload_cpu else tensor
