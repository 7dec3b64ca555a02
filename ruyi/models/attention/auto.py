"""``attention=auto``: the fastest kernel measured for each device, and the memory-bounded fallback.

Decided once per device (``prepare`` / first call):

1. FlashAttention-3 (``fa3.py``) for mask-free bf16 self-attention in inference, on sm90 when the
   ``hopper`` extra is installed (benchmarks/RESULTS.md: 203 ms vs cuDNN's 254 ms at (2, 32, 69 120, 88));
2. on sm90 and newer, cuDNN's fused attention first (then torch's other kernels, for inputs cuDNN
   rejects), with contiguous inputs (torch's own pick there; the issue measured contiguous
   inputs 4 % faster);
3. torch's pick in one call whenever an enabled fused kernel (flash, memory-efficient or cuDNN)
   covers the dtype, or the score matrix fits ``max_score_bytes``;
4. otherwise (CPU, or a GPU whose fused kernels do not cover the dtype, e.g. bf16 on a V100) the
   same call over query slices, so the math kernel never holds the whole score matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from ruyi.errors import ConfigError
from ruyi.models.attention.backends import (
    HALF,
    AttentionBackend,
    DeviceKey,
    SDPAAttention,
    device_key,
    positive,
)
from ruyi.models.attention.fa3 import FlashAttention3
from ruyi.models.attention.kernels import DEFAULT_MAX_SCORE_BYTES, chunked_attention, pad_head_dim, score_bytes
from ruyi.registry import ATTENTIONS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicePlan:
    """What ``auto`` decided for one device.

    ``fa3``: the FlashAttention-3 backend for the calls it serves, or None. ``cudnn``: send
    fp16/bf16 mask-free calls to cuDNN. ``fused`` / ``fused_masked``: dtypes for which some
    enabled fused kernel avoids the full score matrix, without / with a mask.
    """

    label: str
    fa3: FlashAttention3 | None = None
    cudnn: bool = False
    fused: tuple[torch.dtype, ...] = ()
    fused_masked: tuple[torch.dtype, ...] = ()


@ATTENTIONS.register("auto")
class AutoAttention(AttentionBackend):
    """The fastest kernel measured for the device, with the sliced fallback (module docstring)."""

    def __init__(
        self, *, pad_head_dim: int | str = "auto", max_score_bytes: int = DEFAULT_MAX_SCORE_BYTES, use_fa3: bool = True
    ) -> None:
        # "auto": each kernel pads the head dim where padding was measured to pay (AUTO_PAD);
        # a number pads every call up to a multiple of it (dispatch), 0 never pads
        if isinstance(pad_head_dim, str) and pad_head_dim != "auto":
            raise ConfigError(f"attention.pad_head_dim={pad_head_dim!r} must be auto or an integer >= 0 (0 = off)")
        self.auto_pad = pad_head_dim == "auto"
        super().__init__(pad_head_dim=0 if self.auto_pad else pad_head_dim)
        self.max_score_bytes = positive("max_score_bytes", max_score_bytes)
        self.use_fa3 = bool(use_fa3)
        self._plans: dict[DeviceKey, DevicePlan] = {}

    def plan(self, device: torch.device) -> DevicePlan:
        """The decision for ``device``, made on first use (silently: this runs inside traced code)."""
        key = device_key(device)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._decide(device)
        return plan

    def prepare(self, device: torch.device) -> None:
        if device_key(device) not in self._plans:
            log.info("attention=auto on %s: %s", device, self.plan(device).label)

    def _decide(self, device: torch.device) -> DevicePlan:
        if device.type != "cuda":
            return DevicePlan(label=f"torch SDPA, sliced above {self.max_score_bytes} score bytes")
        cc = torch.cuda.get_device_capability(device)
        half = HALF if cc >= (8, 0) else (torch.float16,)
        cuda = torch.backends.cuda
        flash = cuda.flash_sdp_enabled() and cc >= (8, 0)
        efficient = cuda.mem_efficient_sdp_enabled() and cc >= (5, 0)
        cudnn = cuda.cudnn_sdp_enabled() and cc >= (8, 0) and (torch.backends.cudnn.version() or 0) >= 90000
        fused = set(half) if (flash or cudnn) else set()
        fused_masked = set(half) if cudnn else set()
        if efficient:
            fused |= {*half, torch.float32}
            fused_masked |= {*half, torch.float32}
        fa3 = None
        if self.use_fa3:
            candidate = FlashAttention3()
            if candidate.available(device):
                fa3 = candidate
        # cuDNN only where it was measured to win (Hopper); elsewhere torch's priority order
        prefer_cudnn = cudnn and cc >= (9, 0)
        order = [
            n for n, on in (("fa3", fa3 is not None), ("cudnn", prefer_cudnn), ("torch sdpa", True)) if on
        ]
        return DevicePlan(
            label=f"sm{cc[0]}{cc[1]}: " + " > ".join(order), fa3=fa3, cudnn=prefer_cudnn,
            fused=tuple(sorted(fused, key=str)), fused_masked=tuple(sorted(fused_masked, key=str)),
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"AutoAttention(pad_head_dim={'auto' if self.auto_pad else self.pad_head_dim})"

    def compute(self, query, key, value, *, mask, scale, self_attention):
        plan = self.plan(query.device)
        if plan.fa3 is not None and plan.fa3.serves(query, key, value, mask, self_attention):
            query, key, value, width = self._padded("fa3", query, key, value)
            return plan.fa3.run(query, key, value, scale=scale)[..., :width]
        aligned = query.shape[-1] % 8 == 0 and value.shape[-1] == query.shape[-1]
        fused = aligned and query.dtype in (plan.fused if mask is None else plan.fused_masked)
        if fused and plan.cudnn and mask is None and query.dtype in HALF:
            query, key, value, width = self._padded("cudnn", query, key, value)
            out = CUDNN_FIRST.compute(query, key, value, mask=None, scale=scale, self_attention=self_attention)
            return out[..., :width]
        if fused or score_bytes(query, key) <= self.max_score_bytes:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
        return chunked_attention(
            query, key, value, mask=mask, scale=scale, max_score_bytes=self.max_score_bytes
        )


    def _padded(self, kernel: str, query, key, value):
        """The inputs zero-padded as ``AUTO_PAD`` says for ``kernel`` (exact: ``kernels.pad_head_dim``),
        and the value width to cut the output back to."""
        width = value.shape[-1]
        multiple = AUTO_PAD[kernel] if self.auto_pad else 0
        if multiple and query.shape[-1] % multiple:
            query, key, value = (pad_head_dim(t, multiple) for t in (query, key, value))
        return query, key, value, width


# Head-dim padding where it was measured to pay, per kernel (benchmarks/RESULTS.md, H100, Ruyi's
# head dim 88 at (2, 32, 69 120, 88) bf16): FlashAttention-3 200.7 -> 193.8 ms padded to 96; cuDNN
# 252.7 -> 243.5 ms padded to 128 and ~8 % faster at 96 too; the whole 768²x120 forward with
# compile=auto 10.93 -> 10.48 s padded to 96. The padded result is exact; only these two kernels pad.
AUTO_PAD = {"fa3": 32, "cudnn": 32}


class CuDNNFirst(SDPAAttention):
    """cuDNN, then flash, memory-efficient and math for what cuDNN rejects (not registered: ``auto``'s
    step 2; ``attention=cudnn`` is cuDNN alone)."""

    kernels = (
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    )
    priority = True
    contiguous = True


CUDNN_FIRST = CuDNNFirst()
# What a processor without an attached backend uses. One instance, never reassigned: per-device
# decisions are cached on it.
DEFAULT_BACKEND = AutoAttention()
