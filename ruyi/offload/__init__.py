"""Memory strategies. They attach to a pipeline from outside (hooks) and can be removed again."""

from ruyi.offload.base import OffloadStrategy, resolve_device
from ruyi.offload.model import ModelOffload
from ruyi.offload.none import NoOffload
from ruyi.offload.sequential import SequentialOffload

__all__ = ["ModelOffload", "NoOffload", "OffloadStrategy", "SequentialOffload", "resolve_device"]
