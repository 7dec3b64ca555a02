"""Memory strategies. They attach to a pipeline from outside (hooks) and can be removed again."""

from ruyi.offload.base import OffloadStrategy
from ruyi.offload.fp8_compute import FP8Compute
from ruyi.offload.group import GroupOffload
from ruyi.offload.model import ModelOffload
from ruyi.offload.none import NoOffload
from ruyi.offload.precision import FP8Extreme, FP8Lite, FP8Strong, PipelineDtype, WeightPrecision
from ruyi.offload.sequential import SequentialOffload

__all__ = [
    "FP8Compute",
    "FP8Extreme",
    "FP8Lite",
    "FP8Strong",
    "GroupOffload",
    "ModelOffload",
    "NoOffload",
    "OffloadStrategy",
    "PipelineDtype",
    "SequentialOffload",
    "WeightPrecision",
]
