"""Precision: how the transformer's weights are stored and computed (``precision=bf16|fp8_lite|
fp8_strong|fp8_extreme|fp8_compute``), an extension attached before anything moves the weights."""

from ruyi.precision.fp8 import FP8Extreme, FP8Lite, FP8Strong, PipelineDtype, WeightPrecision
from ruyi.precision.fp8_compute import FP8Compute

__all__ = ["FP8Compute", "FP8Extreme", "FP8Lite", "FP8Strong", "PipelineDtype", "WeightPrecision"]
