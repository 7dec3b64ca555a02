"""Placement: where the weights live while the pipeline runs (``offload=none|model|sequential|group``).
Each strategy is an extension (``ruyi.extension``) that attaches from outside through hooks and can be
removed again."""

from ruyi.placement.base import OffloadStrategy
from ruyi.placement.group import GroupOffload
from ruyi.placement.model import ModelOffload
from ruyi.placement.none import NoOffload
from ruyi.placement.sequential import SequentialOffload

__all__ = ["GroupOffload", "ModelOffload", "NoOffload", "OffloadStrategy", "SequentialOffload"]
