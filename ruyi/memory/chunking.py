"""Token chunking: every per-token computation of the transformer's blocks over slices of tokens.

The feed-forward (12 288 wide at 7B), the LayerNorms with their float32 copies, the timestep
modulation, the text and CLIP cross-attention (queries are tokens, keys are the few text/CLIP
rows) and the long-skip merge all treat each token on its own. Run over ``chunk_tokens`` tokens
at a time into one output buffer, their transient memory is bounded by the chunk instead of the
video: at 768 x 768 x 120 frames a block's feed-forward alone holds 2 x 1.6 GiB per batch item
unchunked. Results are the same up to the matmul's summation order (cuBLAS may pick another
kernel for another row count): float tolerance, not bit equality.

Self-attention is not per token and is left whole; ``memory=inplace`` trims its rotary temporaries.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import ModelHook

from ruyi.errors import ConfigError
from ruyi.hooks import ModuleHooks
from ruyi.memory.base import MemoryOption
from ruyi.registry import MEMORIES

# RuyiDiTBlock's submodules that map each token independently (the block may declare its own list
# as ``_per_token_modules``). attn2 / attn_clip: cross-attention, whose keys are not the tokens.
PER_TOKEN_MODULES = (
    "skip_norm", "skip_linear", "norm1", "norm2", "attn2", "norm_clip", "attn_clip", "gate_clip",
    "norm_clip_out", "norm3", "ff",
)  # fmt: skip


def per_token_modules(block: torch.nn.Module) -> list[torch.nn.Module]:
    names = getattr(block, "_per_token_modules", PER_TOKEN_MODULES)
    return [m for m in (getattr(block, n, None) for n in names) if isinstance(m, torch.nn.Module)]


def over_tokens(
    forward, chunk_tokens: int, hidden_states: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """``forward(hidden_states (B, L, D), ...)`` computed over slices of L into one (B, L, D') output.

    ``image_rotary_emb`` (cos, sin), each (L, head_dim), is sliced along with the tokens.
    """
    length = hidden_states.shape[1]
    if length <= chunk_tokens:
        return forward(hidden_states, *args, **kwargs)
    rotary = kwargs.get("image_rotary_emb")
    out = None
    for start in range(0, length, chunk_tokens):
        stop = min(length, start + chunk_tokens)
        if rotary is not None:
            kwargs["image_rotary_emb"] = tuple(t[start:stop] for t in rotary)
        piece = forward(hidden_states[:, start:stop], *args, **kwargs)
        if out is None:
            out = piece.new_empty((piece.shape[0], length, *piece.shape[2:]))
        out[:, start:stop] = piece
        del piece
    return out


class TokenSlices(ModelHook):
    """A per-token module's forward over slices of ``chunk_tokens`` tokens (:func:`over_tokens`)."""

    def __init__(self, chunk_tokens: int) -> None:
        super().__init__()
        self.chunk_tokens = chunk_tokens

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        hidden_states, args = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        return over_tokens(self.fn_ref.original_forward, self.chunk_tokens, hidden_states, *args, **kwargs)


@MEMORIES.register("token_chunks")
class TokenChunks(MemoryOption):
    """``chunk_tokens``: tokens per slice (16 384 keeps the matmuls large enough to run at full
    speed; smaller saves a little more memory and costs more launches)."""

    def __init__(self, *, chunk_tokens: int = 16384) -> None:
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ConfigError(f"memory.chunk_tokens={chunk_tokens!r} must be a positive integer (e.g. 16384)")
        self.chunk_tokens = chunk_tokens
        self._hooks = ModuleHooks("ruyi.memory.token_chunks")

    def apply(self, pipe) -> None:
        for block in pipe.transformer.blocks:
            for module in per_token_modules(block):
                self._hooks.register(module, TokenSlices(self.chunk_tokens))

    def remove(self, pipe) -> None:
        self._hooks.remove()
