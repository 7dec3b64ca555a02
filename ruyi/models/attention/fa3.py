"""FlashAttention-3's forward kernel from the optional ``hopper`` extra (the ``fa3-fwd`` wheel).

The wheel (built on torch's stable ABI, CUDA 13, forward only, bf16 and fp8, no fp16) ran the
7B's self-attention at (2, 32, 69 120, 88) in 203 ms on an H200, against 254 ms for cuDNN with
the same error (benchmarks/RESULTS.md). It serves what it was measured on: mask-free bf16 self-attention on
sm90, without autograd. Every other call (cross-attention, masks, training, fp32, other GPUs)
goes to torch's SDPA.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any

import torch

from ruyi.errors import ConfigError
from ruyi.models.attention.backends import AttentionBackend, DeviceKey, SDPAAttention, device_key
from ruyi.registry import ATTENTIONS

log = logging.getLogger(__name__)

WHEEL = "fa3-fwd==0.0.3"
MODULE = "fa3_fwd_interface"
CAPABILITY = (9, 0)
MAX_HEAD_DIM = 256


@functools.cache
def load_forward() -> Any | None:
    """The wheel's forward op (``torch.ops.fa3_fwd._flash_attn_forward``), or None when the wheel
    is missing or does not load (a build for another torch or CUDA fails at import)."""
    try:
        importlib.import_module(MODULE)  # registers the op with torch
        return torch.ops.fa3_fwd._flash_attn_forward.default
    except (ImportError, OSError, RuntimeError, AttributeError) as err:
        log.info("FlashAttention-3 is not available (%s: %s)", type(err).__name__, err)
        return None


@ATTENTIONS.register("fa3")
class FlashAttention3(AttentionBackend):
    """FlashAttention-3 for the calls it serves (module docstring); torch's SDPA for the rest."""

    needs_accelerator = True
    half_only = True

    def __init__(self, *, pad_head_dim: int = 0) -> None:
        super().__init__(pad_head_dim=pad_head_dim)
        self.fallback = SDPAAttention()
        self._forward: dict[DeviceKey, Any | None] = {}

    def check(self, plan: Any) -> None:
        super().check(plan)
        if plan.dtype != torch.bfloat16:
            raise ConfigError(
                f"attention=fa3 runs bfloat16 only (the wheel has no fp16 kernels), got {plan.dtype}"
            )
        if load_forward() is None:
            raise ConfigError(
                f"attention=fa3 needs the FlashAttention-3 wheel ({WHEEL}, Linux x86-64, a CUDA 13 torch): "
                "pip install 'ruyi[hopper]', or use attention=auto"
            )

    def available(self, device: torch.device) -> bool:
        """Whether FA3 runs on ``device`` (decided once per device)."""
        key = device_key(device)
        if key not in self._forward:
            on_sm90 = device.type == "cuda" and torch.cuda.get_device_capability(device) == CAPABILITY
            self._forward[key] = load_forward() if on_sm90 else None
        return self._forward[key] is not None

    def prepare(self, device: torch.device) -> None:
        if not self.available(device):
            log.warning(
                "attention=fa3: FlashAttention-3 does not run on %s (sm90 + %s); using torch SDPA",
                device,
                WHEEL,
            )

    def serves(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        self_attention: bool,
    ) -> bool:
        """Whether this call is one FA3 takes: shapes, dtype and autograd only, no device probe."""
        head_dim = query.shape[-1]
        training = torch.is_grad_enabled() and (
            query.requires_grad or key.requires_grad or value.requires_grad
        )
        return (
            self_attention and mask is None and not training and query.dtype == torch.bfloat16
            and value.shape[-1] == head_dim and head_dim % 8 == 0 and head_dim <= MAX_HEAD_DIM
        )  # fmt: skip

    def run(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, scale: float
    ) -> torch.Tensor:
        """(B, H, L, D) views in, (B, H, L, D) view out; the kernel reads (B, L, H, D) with any
        batch/row/head strides, so the transposes copy nothing."""
        forward = self._forward[device_key(query.device)]
        q, k, v = (t.transpose(1, 2) for t in (query, key, value))
        out, *_ = forward(q, k, v, softmax_scale=scale)  # (output, log-sum-exp, split accumulators)
        return out.transpose(1, 2)

    def compute(self, query, key, value, *, mask, scale, self_attention):
        if self.available(query.device) and self.serves(query, key, value, mask, self_attention):
            return self.run(query, key, value, scale=scale)
        return self.fallback.compute(query, key, value, mask=mask, scale=scale, self_attention=self_attention)
