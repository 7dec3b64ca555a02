"""Several memory options at once: ``memory=combo`` (all four) or ``memory=combo memory.use=[cfg_split,inplace]``.

A config group selects one node, so the combination is one component that builds the others by
registry name; per-option settings go under ``options`` (``+memory.options.cfg_split.granularity=
transformer``). The options touch different places (block forwards, per-token submodules, the
attention processors' rotary, the VAE's decode), so their order does not matter.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ruyi.errors import ConfigError
from ruyi.memory.base import MemoryOption
from ruyi.registry import MEMORIES

NOT_COMBINABLE = ("combo", "auto")


def build_options(use: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> list[MemoryOption]:
    """Memory option objects by registry name, each with its ``options`` entry (ConfigError on misuse)."""
    if isinstance(use, str):
        use = [use]
    names = list(use)
    nested = [n for n in names if n in NOT_COMBINABLE]
    if nested:
        raise ConfigError(
            f"memory.use={names} may not contain {', '.join(nested)}; list the options themselves"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"memory.use={names} names an option twice")
    unused = sorted(set(options) - set(names))
    if unused:
        raise ConfigError(
            f"memory.options has settings for {', '.join(unused)}, which memory.use={names} does not list"
        )
    return [_create(n, dict(options.get(n) or {})) for n in names]


def _create(name: str, options: dict[str, Any]) -> MemoryOption:
    cls = MEMORIES.get(name)
    try:
        return cls(**options)
    except TypeError as err:
        accepted = ", ".join(inspect.signature(cls).parameters) or "none"
        raise ConfigError(
            f"memory option {name} got {sorted(options)}: {err}; it accepts {accepted}"
        ) from None


@MEMORIES.register("combo")
class MemoryCombo(MemoryOption):
    def __init__(
        self,
        *,
        use: Sequence[str] = ("cfg_split", "token_chunks", "inplace", "vae_stream"),
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.options = build_options(use, options or {})

    @property
    def splits_batch(self) -> bool:  # type: ignore[override]
        return any(o.splits_batch for o in self.options)

    def check(self, plan) -> None:
        for option in self.options:
            option.check(plan)

    def apply(self, pipe) -> None:
        for option in self.options:
            option.apply(pipe)

    def remove(self, pipe) -> None:
        for option in reversed(self.options):
            option.remove(pipe)

    def __repr__(self) -> str:
        return f"MemoryCombo({', '.join(map(repr, self.options))})"
