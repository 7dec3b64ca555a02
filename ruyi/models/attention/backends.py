"""Attention backends: which kernel runs a call of :func:`ruyi.models.attention.attention`.

Each backend is a registered component (``configs/attention/<name>.yaml``) and a strategy that
attaches from outside: ``apply(pipe)`` sets it on every attention processor of the transformer,
``remove(pipe)`` puts back what was there. Decisions that cost a probe (device capability,
enabled SDPA kernels, whether an optional wheel imports) are made once per device in
``prepare(device)``; ``compute`` only branches on shapes and dtypes, on which a compiled block
specialises anyway. ``auto`` (the default) is in ``auto.py``, FlashAttention-3 in ``fa3.py``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ruyi.errors import AcceleratorRequired, ConfigError
from ruyi.extension import Extension
from ruyi.models.attention.kernels import DEFAULT_MAX_SCORE_BYTES, chunked_attention
from ruyi.registry import ATTENTIONS

HALF = (torch.float16, torch.bfloat16)
# newer torch reads the kernel list as a priority order (older releases: as a set)
PRIORITY_ORDER = "set_priority" in inspect.signature(sdpa_kernel).parameters
DeviceKey = tuple[str, int | None]


def device_key(device: torch.device) -> DeviceKey:
    if device.type == "cuda" and device.index is None:
        return ("cuda", torch.cuda.current_device())
    return (device.type, device.index)


class AttentionBackend(Extension):
    """Base of the registered backends. ``pad_head_dim=N`` zero-pads the head dim up to a multiple
    of N before the kernel (96 or 128 for Ruyi's 88; the output is the same, see ``kernels.py``).

    Class facts: ``stage`` (where the assembly attaches it: after offload, before compile),
    ``needs_accelerator`` (the kernel exists only on CUDA) and ``half_only`` (fp16/bf16 inputs only).
    """

    stage: ClassVar[str] = "attention"
    needs_accelerator: ClassVar[bool] = False
    half_only: ClassVar[bool] = False

    def __init__(self, *, pad_head_dim: int = 0) -> None:
        if not isinstance(pad_head_dim, int) or isinstance(pad_head_dim, bool) or pad_head_dim < 0:
            raise ConfigError(
                f"attention.pad_head_dim={pad_head_dim!r} must be an integer >= 0 "
                "(0 = off; 96 or 128 pad Ruyi's head dim 88)"
            )
        self.pad_head_dim = pad_head_dim
        self._replaced: list[tuple[Any, AttentionBackend | None]] = []

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pad_head_dim={self.pad_head_dim})"

    # -- strategy ------------------------------------------------------------------------------
    def check(self, plan: Any) -> None:
        """Before any weight loads: the plan's ``device`` and ``dtype`` fit this kernel."""
        if self.needs_accelerator and plan.device.type != "cuda":
            raise AcceleratorRequired(
                f"attention={self.name} runs only on a CUDA GPU, but the device is {plan.device}; "
                "use attention=auto (or sdpa/chunked) on this machine"
            )
        dtype = plan.dtype
        if self.half_only and dtype not in HALF:
            raise ConfigError(
                f"attention={self.name} needs dtype bfloat16 or float16, got {dtype}; "
                "use attention=auto or sdpa for float32"
            )

    def apply(self, pipe: Any) -> None:
        """Set this backend on every attention processor of ``pipe.transformer``."""
        self.attach(pipe.transformer, device=getattr(pipe, "execution_device", None))

    def remove(self, pipe: Any) -> None:
        self.detach()

    def attach(self, model: torch.nn.Module, *, device: torch.device | None = None) -> None:
        """Set on ``model``'s processors, deciding for ``device`` now so compiled code never probes."""
        if device is not None:
            self.prepare(torch.device(device))
        self._replaced += set_attention_backend(model, self)

    def detach(self) -> None:
        for processor, previous in reversed(self._replaced):
            processor.attention_backend = previous
        self._replaced = []

    # -- kernel --------------------------------------------------------------------------------
    def prepare(self, device: torch.device) -> None:
        """Make the per-device decisions for ``device`` (idempotent)."""

    def compute(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        mask: torch.Tensor | None,
        scale: float,
        self_attention: bool,
    ) -> torch.Tensor:
        """(B, heads, Lq, D), (B, heads, Lk, D), (B, heads, Lk, Dv) -> (B, heads, Lq, Dv), already padded."""
        raise NotImplementedError


def set_attention_backend(
    model: torch.nn.Module, backend: AttentionBackend | None
) -> list[tuple[Any, AttentionBackend | None]]:
    """Give every processor of ``model`` with an ``attention_backend`` slot ``backend`` (None = auto).

    A backend that declares ``wraps_attention_backend`` (sequence parallelism's exchange around the
    kernel) keeps its place: ``backend`` goes inside it. Returns (holder, previous backend) pairs,
    in order, so that a caller can restore them.
    """
    replaced = []
    for module in model.modules():
        holder = getattr(module, "processor", None)
        if holder is None or not hasattr(holder, "attention_backend"):
            continue
        while getattr(holder.attention_backend, "wraps_attention_backend", False):
            holder = holder.attention_backend
        replaced.append((holder, holder.attention_backend))
        holder.attention_backend = backend
    return replaced


@ATTENTIONS.register("sdpa")
class SDPAAttention(AttentionBackend):
    """``torch.nn.functional.scaled_dot_product_attention`` as is: torch picks the kernel per call."""

    # the SDPA kernels this backend allows (None = torch's choice), whether their order is a
    # priority order, and whether inputs are made contiguous first (cuDNN runs faster on
    # contiguous (B, H, L, D), measured: benchmarks/RESULTS.md)
    kernels: ClassVar[tuple[SDPBackend, ...] | None] = None
    priority: ClassVar[bool] = False
    contiguous: ClassVar[bool] = False

    def compute(self, query, key, value, *, mask, scale, self_attention):
        if self.contiguous:
            query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        if self.kernels is None:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
        if self.priority and PRIORITY_ORDER:
            with sdpa_kernel(list(self.kernels), set_priority=True):
                return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
        with sdpa_kernel(list(self.kernels)):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


@ATTENTIONS.register("cudnn")
class CuDNNAttention(SDPAAttention):
    """cuDNN's fused attention only (CUDA, cuDNN 9, fp16/bf16)."""

    kernels = (SDPBackend.CUDNN_ATTENTION,)
    contiguous = True
    needs_accelerator = True
    half_only = True


@ATTENTIONS.register("flash")
class FlashAttention(SDPAAttention):
    """torch's FlashAttention-2 kernel only (CUDA sm80+, fp16/bf16, no mask)."""

    kernels = (SDPBackend.FLASH_ATTENTION,)
    needs_accelerator = True
    half_only = True


@ATTENTIONS.register("efficient")
class EfficientAttention(SDPAAttention):
    """torch's memory-efficient kernel only (CUDA; fp32 too)."""

    kernels = (SDPBackend.EFFICIENT_ATTENTION,)
    needs_accelerator = True


@ATTENTIONS.register("math")
class MathAttention(SDPAAttention):
    """torch's reference math kernel: the whole score matrix at once (small shapes, references)."""

    kernels = (SDPBackend.MATH,)


@ATTENTIONS.register("chunked")
class ChunkedAttention(AttentionBackend):
    """Always the sliced path: each slice's scores within ``max_score_bytes`` (any device)."""

    def __init__(self, *, pad_head_dim: int = 0, max_score_bytes: int = DEFAULT_MAX_SCORE_BYTES) -> None:
        super().__init__(pad_head_dim=pad_head_dim)
        self.max_score_bytes = positive("max_score_bytes", max_score_bytes)

    def compute(self, query, key, value, *, mask, scale, self_attention):
        return chunked_attention(
            query, key, value, mask=mask, scale=scale, max_score_bytes=self.max_score_bytes
        )


def positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"attention.{name}={value!r} must be a positive integer")
    return value
