"""Plugins that change how the transformer runs without editing it: LoRA weights, TeaCache,
Enhance-A-Video. Each has ``attach(pipe)`` / ``detach(pipe)`` and keeps its own state; those that
act per step add themselves to ``pipe.callbacks`` (the denoising loop's callbacks).

From Hydra (``configs/infer.yaml``): ``lora`` is a list of ``{path, strength}``; ``teacache`` and
``enhance_a_video`` are groups, null (off) by default, ``on`` to enable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ruyi.plugins.enhance_a_video import EnhanceAVideo, enhance_factor
from ruyi.plugins.lora import LoRAWeights, read_lora
from ruyi.plugins.teacache import TeaCache
from ruyi.registry import PLUGINS

log = logging.getLogger(__name__)

__all__ = ["EnhanceAVideo", "LoRAWeights", "Plugin", "TeaCache", "attach_plugins", "build_plugins", "detach_plugins",
           "enhance_factor", "read_lora"]  # fmt: skip

# LoRA before the others (it edits weights); then the hooks, in a fixed order
GROUPS = ("teacache", "enhance_a_video")


class Plugin(Protocol):
    def attach(self, pipe: Any) -> None: ...

    def detach(self, pipe: Any) -> None: ...


def build_plugins(cfg: Mapping[str, Any]) -> list[Plugin]:
    """Validated plugins from a composed config (no weights are touched): ``cfg.lora`` entries,
    then the selected ``teacache`` / ``enhance_a_video`` groups. Errors are one-line ValueErrors."""
    plugins: list[Plugin] = []
    loras = cfg.get("lora") or []
    if isinstance(loras, (str, Mapping)) or not isinstance(loras, Iterable):
        raise ValueError("lora must be a list of {path: file.safetensors, strength: 1.2}")
    for entry in loras:
        if not isinstance(entry, Mapping) or "path" not in entry or set(entry) - {"path", "strength"}:
            raise ValueError(f"lora entry {entry!r} must be {{path: file.safetensors, strength: 1.2}}")
        plugins.append(PLUGINS.get("lora")(path=_absolute(entry["path"]), strength=entry.get("strength", 1.0)))
    for group in GROUPS:
        node = cfg.get(group)
        if node is not None:
            kwargs = {k: v for k, v in dict(node).items() if k != "_target_"}
            plugins.append(PLUGINS.get(group)(**kwargs))
    return plugins


def attach_plugins(pipe: Any, plugins: Iterable[Plugin]) -> None:
    """Attach in order; call before memory strategies so LoRA merges into the unconverted weights."""
    for plugin in plugins:
        log.info("attaching %s", plugin)
        plugin.attach(pipe)


def detach_plugins(pipe: Any, plugins: Iterable[Plugin]) -> None:
    for plugin in reversed(list(plugins)):
        plugin.detach(pipe)


def check_offload_compatible(plugins: Iterable[Plugin], offload: str) -> None:
    """TeaCache calls the first block's norm outside that block's forward, which block-level group
    offloading has not loaded yet."""
    if offload == "group" and any(isinstance(p, TeaCache) for p in plugins):
        raise ValueError("teacache does not work with offload=group yet; use offload=model or offload=sequential")


def _absolute(path: str) -> str:
    try:  # relative to where the user started the job, even if Hydra changed directory
        from hydra.utils import to_absolute_path

        return to_absolute_path(str(path))
    except (ImportError, ValueError):
        return str(path)
