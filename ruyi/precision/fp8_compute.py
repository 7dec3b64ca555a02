"""``precision=fp8_compute``: FP8 matmuls for the transformer blocks' linears, through torchao.

Unlike the storage modes of ``precision.py`` (FP8 weights upcast before a bf16 matmul), the
matmul itself runs in float8_e4m3fn: weights quantised once with per-row (or per-tensor) scales,
activations quantised on the fly (torchao's ``Float8DynamicActivationFloat8WeightConfig``).
benchmarks/RESULTS.md records a Hopper FP8 GEMM at ~1 250 TFLOP/s vs ~680 bf16, but the on-the-fly
quantisation is a separate kernel in eager mode, which makes it slower than bf16; under
``torch.compile`` it fuses into the preceding op (2816 -> 12288 at 138 240 rows: 7.7 vs 13.7 ms).
Hence the requirements checked before any weight loads: a CUDA GPU of compute capability 8.9+,
``compile=regional``, ``dtype=bfloat16`` and torchao (``pip install 'ruyi[hopper]'``).
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import torch

from ruyi.errors import AcceleratorRequired, ConfigError
from ruyi.precision.fp8 import WeightPrecision
from ruyi.registry import PRECISIONS

GRANULARITIES = ("row", "tensor")
MIN_CAPABILITY = (8, 9)
# torch._scaled_mm needs both matrix sides in multiples of 16
ALIGNMENT = 16
# Linears run on B rows (timestep modulation of the adaLN norms): quantising their activations
# costs more than an FP8 matmul of 2 rows saves
SKIP_NAME_PARTS = ("norm",)


@PRECISIONS.register("fp8_compute")
class FP8Compute(WeightPrecision):
    """FP8 (e4m3) weights and activations in every block linear with 16-aligned sides."""

    needs_compile: ClassVar[bool] = True
    changes_weights: ClassVar[bool] = True  # quantised by torchao after loading (read by offload=group)

    def __init__(self, *, granularity: str = "row") -> None:
        if granularity not in GRANULARITIES:
            raise ConfigError(
                f"precision.granularity={granularity!r} is not one of {', '.join(GRANULARITIES)}"
            )
        self.granularity = granularity

    def __repr__(self) -> str:
        return f"FP8Compute(granularity={self.granularity})"

    def check(self, plan: Any) -> None:
        """The plan's device, dtype and strategies allow FP8 compute (a strategy that declares
        ``compiles = True``), and torchao is importable."""
        device = plan.device
        if device.type != "cuda" or not torch.cuda.is_available():
            raise AcceleratorRequired(
                f"precision=fp8_compute needs a CUDA GPU of compute capability 8.9+ (Ada, Hopper), "
                f"but the device is {device}; use precision=bf16 or an FP8 storage mode (fp8_lite)"
            )
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CAPABILITY:
            raise AcceleratorRequired(
                f"precision=fp8_compute needs compute capability 8.9+ (Ada, Hopper); {device} has "
                f"{capability[0]}.{capability[1]}; use precision=fp8_lite (FP8 storage, bf16 compute)"
            )
        if not plan.has("compiles"):
            raise ConfigError(
                "precision=fp8_compute needs compile=regional: eager FP8 quantises each activation in a "
                "separate kernel and is slower than bf16"
            )
        if plan.dtype != torch.bfloat16:
            raise ConfigError(
                f"precision=fp8_compute computes around bfloat16; set dtype=bfloat16 (got {plan.dtype})"
            )
        if not torchao_installed():
            raise ConfigError("precision=fp8_compute needs torchao: pip install 'ruyi[hopper]'")

    def select(self, model: torch.nn.Module) -> list[str]:
        """Names of the linears to convert: inside ``model.blocks``, both sides multiples of 16,
        not the adaLN modulation."""
        chosen = []
        for name, module in model.named_modules():
            if not name.startswith("blocks.") or not isinstance(module, torch.nn.Linear):
                continue
            if any(part in name for part in SKIP_NAME_PARTS):
                continue
            if module.in_features % ALIGNMENT == 0 and module.out_features % ALIGNMENT == 0:
                chosen.append(name)
        return chosen

    def convert(self, model: torch.nn.Module, compute_dtype: torch.dtype) -> int:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            PerTensor,
            quantize_,
        )

        chosen = set(self.select(model))
        granularity = PerRow() if self.granularity == "row" else PerTensor()
        # set_inductor_config=False: by default torchao switches inductor's coordinate-descent
        # tuning on for the whole process, which made the first compiled call of the 7B take ~520 s
        # instead of ~29 s on an H200 (benchmarks/RESULTS.md) and slows every later compile in the process
        config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity, set_inductor_config=False)
        quantize_(model, config, filter_fn=lambda _module, name: name in chosen)
        return len(chosen)


def torchao_installed() -> bool:
    return importlib.util.find_spec("torchao") is not None
