"""Plugins that change how the transformer runs without editing it: LoRA weights, TeaCache,
Enhance-A-Video. Each has ``attach(pipe)`` / ``detach(pipe)`` and keeps its own state; those that
act per step add themselves to ``pipe.callbacks`` (the denoising loop's callbacks).

From Hydra (``configs/infer.yaml``): ``lora`` is a list of ``{path, strength}``; ``teacache`` and
``enhance_a_video`` are groups, null (off) by default, ``on`` to enable. ``ruyi.assembly`` builds
them like every other component and attaches them first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from ruyi.plugins.enhance_a_video import EnhanceAVideo, enhance_factor
from ruyi.plugins.lora import LoRAWeights, read_lora
from ruyi.plugins.teacache import TeaCache

log = logging.getLogger(__name__)

__all__ = ["EnhanceAVideo", "LoRAWeights", "Plugin", "TeaCache", "attach_plugins", "detach_plugins", "enhance_factor",
           "read_lora"]  # fmt: skip



class Plugin(Protocol):
    def attach(self, pipe: Any) -> None: ...

    def detach(self, pipe: Any) -> None: ...


def attach_plugins(pipe: Any, plugins: Iterable[Plugin]) -> None:
    """Attach in order; call before memory strategies so LoRA merges into the unconverted weights."""
    for plugin in plugins:
        log.info("attaching %s", plugin)
        plugin.attach(pipe)


def detach_plugins(pipe: Any, plugins: Iterable[Plugin]) -> None:
    for plugin in reversed(list(plugins)):
        plugin.detach(pipe)
