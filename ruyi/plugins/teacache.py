"""TeaCache: skip the transformer's block stack on calls whose timestep-modulated input barely moved.

Each model call TeaCache measures how far the first block's modulated input (its ``norm1`` of the
tokens and the timestep embedding) moved since the last fully computed call, rescales that
relative L1 distance with the original's polynomial, and accumulates it. While the sum stays below
``threshold`` the block stack is skipped and the residual it added last time is reused.

Its window counts as the original's counter does: transformer calls, starting over every
``steps`` calls (the user's steps). Samplers that evaluate once per step see one window; PNDM's
warm-up evaluates more often than it steps (13 calls for 4 steps), so its window starts over
within the run (calls 0-3, 4-7, 8-11, 12) and each window seeds the cache again.

It attaches through diffusers' ``HookRegistry``, in the shape of diffusers' FirstBlockCache:

- the first block always runs; a hook on its ``attn1`` reads the modulated input as the block
  itself computed it, so whatever loads that block's weights (group, sequential or model offload,
  sharded weights) has loaded them, whichever order the hooks were registered in;
- after the first block, the decision; on a cached call every later block returns its input
  unchanged, so the U-ViT long skips still push and pop one tensor per block;
- a hook on ``norm_out``, the stack's last layer, returns the stack's input plus the cached
  residual on a cached call, and records that residual on a computed one.

Running the first block on cached calls costs 1/num_layers of a step (1/40 at 7B). Under
``compile=regional`` the hooks run inside the blocks' graphs and the decision eagerly between two
pieces of the first block's graph, which is why ``compile.fullgraph=true`` is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers.hooks import ModelHook

from ruyi.checks import check_int, check_number
from ruyi.errors import ConfigError
from ruyi.extension import Extension
from ruyi.hooks import ModuleHooks
from ruyi.registry import PLUGINS

log = logging.getLogger(__name__)

# fitted by the original for Ruyi-Mini-7B: rescaled distance = polyval(COEFFICIENTS, rel_l1)
COEFFICIENTS = (-7.51185620e03, 2.32931511e03, -2.25610663e02, 9.39902237e00, -7.43067848e-02)

HOOK = "ruyi.teacache"


def _tokens(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _FirstBlock(ModelHook):
    """On ``blocks[0]``: note the stack's input, run the block, then decide for the other blocks."""

    def __init__(self, cache: TeaCache) -> None:
        super().__init__()
        self.cache = cache

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        measure = self.cache._begin_call(_tokens(args, kwargs))
        output = self.fn_ref.original_forward(*args, **kwargs)
        if measure:
            self.cache._decide()
        return output


class _ModulatedInput(ModelHook):
    """On ``blocks[0].attn1``: its input is ``norm1(tokens, temb)``, the statistic's source."""

    def __init__(self, cache: TeaCache) -> None:
        super().__init__()
        self.cache = cache

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        if self.cache._measuring:
            self.cache._modulated = _tokens(args, kwargs)
        return args, kwargs


class _LaterBlock(ModelHook):
    """On ``blocks[1:]``: the block's input unchanged while the cache is reused."""

    def __init__(self, cache: TeaCache) -> None:
        super().__init__()
        self.cache = cache

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.cache._skipping:
            return _tokens(args, kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)


class _StackOutput(ModelHook):
    """On ``norm_out``: the stack's input plus the cached residual, or the computed output."""

    def __init__(self, cache: TeaCache) -> None:
        super().__init__()
        self.cache = cache

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.cache._skipping:
            return self.cache._reuse()
        return self.cache._finish(self.fn_ref.original_forward(*args, **kwargs))


@PLUGINS.register("teacache")
class TeaCache(Extension):
    """Attach with ``apply(pipe)``; after a run ``skipped_steps`` says how many model calls reused
    the cache and ``skipped`` which ones.

    Window positions ``< skip_start_steps`` and the last ``skip_end_steps`` always run the blocks.
    ``threshold=0`` never skips (the polynomial dips below zero for near-identical inputs, which
    would otherwise skip even at 0); 0.10 caches about 6-8 of 25 steps, 0.15 about 10-12.

    ``across_ranks`` (None, or set by ``ruyi.parallel``) averages the statistic's means over the
    processes that each hold part of the batch or tokens, so every rank takes the same branch.
    """

    stage = "plugins"

    reads_whole_batch = True  # its statistic averages the whole CFG batch (memory=cfg_split refuses it)

    def __init__(
        self, *, threshold: float = 0.10, skip_start_steps: int = 1, skip_end_steps: int = 1, offload_cpu: bool = False
    ) -> None:
        self.threshold = check_number("plugin.teacache.threshold", threshold, low=0, hint="0.10 caches ~6-8 of 25 steps")
        self.skip_start_steps = check_int("plugin.teacache.skip_start_steps", skip_start_steps, low=1)
        self.skip_end_steps = check_int("plugin.teacache.skip_end_steps", skip_end_steps, low=1)
        self.offload_cpu = bool(offload_cpu)
        self.skipped_steps = 0
        self.skipped: list[int] = []  # model-call indices of the last run that reused the cache
        self.across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._hooks = ModuleHooks(HOOK)
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
        self._end_call()

    def _end_call(self) -> None:
        self._stack_input: torch.Tensor | None = None
        self._modulated: torch.Tensor | None = None
        self._measuring = False  # the first block's attn1 hook records its input
        self._skipping = False  # the later blocks pass through, norm_out returns input + residual
        self._keep_residual = False  # this call seeds the cache: norm_out records the residual

    # -- attachment --------------------------------------------------------------------------
    def check(self, plan) -> None:
        """The decision reads the statistic back to the host inside the first block's forward, a
        break in that block's compiled graph (``compile.fullgraph=true`` forbids breaks)."""
        if plan.has("fullgraph"):
            raise ConfigError(
                "teacache decides inside the first block, whose graph compile.fullgraph=true may not break; "
                "use compile.fullgraph=false"
            )

    def apply(self, pipe) -> None:
        transformer = pipe.transformer
        first, *later = transformer.blocks
        hooks = [(first, _FirstBlock(self)), (first.attn1, _ModulatedInput(self))]
        hooks += [(block, _LaterBlock(self)) for block in later] + [(transformer.norm_out, _StackOutput(self))]
        if ModuleHooks.present(first, HOOK):
            raise ValueError("the transformer already has a TeaCache attached; remove it first")
        for module, hook in hooks:  # each new_forward hook gets a guard below it (ruyi.hooks.PassThrough)
            self._hooks.register(module, hook)
        pipe.callbacks.append(self)

    def remove(self, pipe) -> None:
        self._hooks.remove()
        if self in pipe.callbacks:
            pipe.callbacks.remove(self)
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

    # -- one model call, driven by the hooks ----------------------------------------------------
    # compiled blocks (compile=regional) run these eagerly: they read per-call Python state and
    # synchronise on the statistic, which would otherwise recompile or break the block's graph
    @torch.compiler.disable
    def _begin_call(self, hidden_states: torch.Tensor) -> bool:
        """hidden_states (B, F*h*w, D): the stack's input. Whether this call measures the statistic."""
        self._end_call()
        step = self.step
        if step is None or step < self.skip_start_steps - 1 or step >= self.num_steps - self.skip_end_steps:
            return False
        self._stack_input, self._measuring = hidden_states, True
        return True

    @torch.compiler.disable
    def _decide(self) -> None:
        modulated, self._modulated, self._measuring = self._modulated, None, False
        if modulated is None:
            raise RuntimeError("TeaCache: the first block ran but its attn1 hook saw no input; was attn1's hook removed?")
        if self.step == self.skip_start_steps - 1:  # the step that seeds the cache
            self._accumulated = 0.0
        else:
            self._accumulated += self.rescaled_distance(modulated)
            if self.threshold > 0 and self._accumulated < self.threshold:
                self._skipping = True
                self.skipped_steps += 1
                self.skipped.append(self.call)
                return
            self._accumulated = 0.0
        self._previous_modulated = self._store(modulated)
        self._keep_residual = True

    def _reuse(self) -> torch.Tensor:
        """The stack's output on a cached call: its input plus the residual (B, F*h*w, D)."""
        hidden_states = self._stack_input
        self._end_call()
        return hidden_states + self._residual.to(hidden_states.device)

    def _finish(self, output: torch.Tensor) -> torch.Tensor:
        if self._keep_residual:
            self._residual = self._store(output - self._stack_input)
        self._end_call()
        return output

    def rescaled_distance(self, modulated: torch.Tensor) -> float:
        """modulated (B, F*h*w, D) against the last computed call's -> the rescaled relative L1 distance."""
        previous = self._previous_modulated.to(modulated.device)
        means = torch.stack([(modulated - previous).abs().mean(), previous.abs().mean()])
        if self.across_ranks is not None:
            means = self.across_ranks(means)
        rel_l1 = (means[0] / means[1]).item()
        return float(np.polyval(COEFFICIENTS, rel_l1))

    def _store(self, tensor: torch.Tensor) -> torch.Tensor:
        # offload_cpu trades a copy per computed step for not holding two activations on the GPU
        return tensor.to("cpu") if self.offload_cpu else tensor
