"""In-place and fused elementwise work where it is safe: same values, fewer whole-video temporaries.

- Rotary embedding: diffusers computes ``(x.float() * cos + rotate(x).float() * sin).to(x.dtype)``
  on the whole (B, heads, L, head_dim) query and key, which holds three float32 copies of each
  at once: at 768 x 768 x 120 frames that sets the peak of a block (3 x 0.73 GiB per batch item,
  more than the feed-forward). Here the same expression runs over slices of tokens and is written
  into one output of x's dtype, so the float32 copies only ever cover a slice. Elementwise and in
  the same order: bit-identical.
- Feed-forward activation: GELU applied in place on the projection's fresh output instead of into
  a second 12 288-wide buffer (``aten.gelu_``, the same kernel). Only without autograd (training
  would need the input again) and only on diffusers' ``GELU`` layout (projection, then GELU).

The GELU changes through a diffusers ``ModelHook`` on each ``GELU`` module. The rotary runs inside
the attention processor, which is not a module (no forward a hook could wrap): the processor
exposes it as ``processor.rotary``, and this option swaps it per processor and puts the previous
one back on ``remove``.
"""

from __future__ import annotations

from functools import partial

import torch
from diffusers.hooks import ModelHook
from diffusers.models.activations import GELU

from ruyi.errors import ConfigError
from ruyi.hooks import ModuleHooks
from ruyi.memory.base import MemoryOption
from ruyi.registry import MEMORIES


def rotary_in_chunks(
    x: torch.Tensor, freqs: tuple[torch.Tensor, torch.Tensor], *, chunk_tokens: int = 16384
) -> torch.Tensor:
    """x (B, heads, L, head_dim) with (cos, sin), each (L, head_dim) -> rotated x, same dtype.

    Channel pairs (2i, 2i+1) rotate as (real, imaginary), as diffusers' ``apply_rotary_emb`` with
    ``use_real=True`` and ``use_real_unbind_dim=-1``; float32 maths over ``chunk_tokens`` tokens at a time.
    """
    cos, sin = freqs
    length = x.shape[2]
    out = torch.empty_like(x)
    for start in range(0, length, chunk_tokens):
        stop = min(length, start + chunk_tokens)
        part = x[:, :, start:stop]
        real, imag = part.unflatten(-1, (-1, 2)).unbind(-1)
        rotated = torch.stack([-imag, real], dim=-1).flatten(3)
        c, s = cos[start:stop].to(x.device), sin[start:stop].to(x.device)
        out[:, :, start:stop] = (part.float() * c + rotated.float() * s).to(x.dtype)
    return out


class GeluInPlace(ModelHook):
    """diffusers' ``GELU`` (projection, then GELU) with the GELU written over the projection."""

    def new_forward(self, module: GELU, hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # autograd keeps the projection for the backward pass
            return self.fn_ref.original_forward(hidden_states)
        projected = module.proj(hidden_states)
        return torch.ops.aten.gelu_(projected, approximate=module.approximate)


@MEMORIES.register("inplace")
class InPlace(MemoryOption):
    """``chunk_tokens``: tokens per slice of the rotary's float32 maths."""

    def __init__(self, *, chunk_tokens: int = 16384) -> None:
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ConfigError(f"memory.chunk_tokens={chunk_tokens!r} must be a positive integer (e.g. 16384)")
        self.chunk_tokens = chunk_tokens
        self._hooks = ModuleHooks("ruyi.memory.inplace")
        self._rotaries: list[tuple[object, object]] = []  # (processor, its previous rotary)

    def apply(self, pipe) -> None:
        lean = partial(rotary_in_chunks, chunk_tokens=self.chunk_tokens)
        for module in pipe.transformer.modules():
            processor = getattr(module, "processor", None)
            if processor is not None and hasattr(processor, "rotary"):
                self._rotaries.append((processor, processor.rotary))
                processor.rotary = lean
            if isinstance(module, GELU):
                self._hooks.register(module, GeluInPlace())
        if not self._rotaries:
            raise TypeError(f"{type(pipe.transformer).__name__}'s attention processors have no `rotary` hook")

    def remove(self, pipe) -> None:
        while self._rotaries:
            processor, previous = self._rotaries.pop()
            processor.rotary = previous
        self._hooks.remove()
