"""The one attention entry point of every ruyi model.

:func:`attention` pads the head dimension when the backend asks for it, hands the call to the
backend (``backends.py``: which kernel runs, chosen once per device) and cuts the padding off
again. It imports nothing and probes nothing per call, so a compiled block traces it without
graph breaks.
"""

from __future__ import annotations

import torch

from ruyi.models.attention.auto import DEFAULT_BACKEND
from ruyi.models.attention.backends import AttentionBackend
from ruyi.models.attention.kernels import pad_head_dim


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    backend: AttentionBackend | None = None,
    self_attention: bool = False,
) -> torch.Tensor:
    """query (B, heads, Lq, D), key (B, heads, Lk, D), value (B, heads, Lk, Dv) -> (B, heads, Lq, Dv).

    softmax(q kᵀ / sqrt(D)) v, with D the head dim as given (padding never changes the scale).
    ``mask`` broadcasts to (B, heads, Lq, Lk): bool (True = attend) or additive float.
    ``backend`` defaults to ``auto``; ``self_attention`` tells backends that only serve
    self-attention (FlashAttention-3) that the keys are the queries' own tokens.
    """
    backend = DEFAULT_BACKEND if backend is None else backend
    scale = query.shape[-1] ** -0.5
    value_dim = value.shape[-1]
    multiple = backend.pad_head_dim
    if multiple:
        query, key, value = (pad_head_dim(t, multiple) for t in (query, key, value))
    out = backend.compute(query, key, value, mask=mask, scale=scale, self_attention=self_attention)
    return out[..., :value_dim] if out.shape[-1] != value_dim else out


def prepare_attention(model: torch.nn.Module, device: torch.device) -> None:
    """Let every processor's backend (``auto`` when none is set) decide for ``device`` now.

    The per-device decision probes the device and may import an optional wheel; done before
    ``torch.compile`` traces a block, the compiled code only reads the cached decision.
    """
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "attention_backend"):
            (processor.attention_backend or DEFAULT_BACKEND).prepare(torch.device(device))
