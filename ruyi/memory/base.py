"""What every memory option shares: the ``memory`` stage, and forwards wrapped per instance.

A memory option changes how much activation memory the models hold, never what they compute:
it replaces the ``forward`` of chosen module instances by a wrapper (the model files stay as they
are) and restores it on ``remove``. Offload hooks attach later (``STAGES``: memory before offload)
and wrap the wrapper in turn; if ours is taken off while such a hook still sits on top of it, it
stays in the chain as a pass-through instead of cutting the hook out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ruyi.extension import Extension

Forward = Callable[..., Any]
Wrapper = Callable[..., Any]  # (original_forward, *args, **kwargs) -> output


class MemoryOption(Extension):
    """Base: ``check(plan)`` before any weight loads, ``apply(pipe)`` / ``remove(pipe)`` after.

    Facts read by others through ``Plan.has``: ``splits_batch`` (the guidance halves run one after
    another, so anything taking statistics over the whole batch would change).
    """

    stage = "memory"
    splits_batch = False



class ForwardPatches:
    """The forwards one option replaced, so that ``undo()`` puts every one of them back."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def wrap(self, module: torch.nn.Module, wrapper: Wrapper, method: str = "forward") -> None:
        """``module.<method>(...)`` (``module(...)`` for forward) now runs ``wrapper(original, ...)``."""
        original: Forward = getattr(module, method)
        had_own = method in module.__dict__  # an instance attribute (another hook) to restore
        state = {"active": True}

        def forward(*args: Any, **kwargs: Any) -> Any:
            if not state["active"]:
                return original(*args, **kwargs)
            return wrapper(original, *args, **kwargs)

        forward.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(module, method, forward)

        def undo() -> None:
            if module.__dict__.get(method) is not forward:
                state["active"] = False  # something wrapped us since: stay in its chain, inert
            elif had_own:
                setattr(module, method, original)
            else:
                delattr(module, method)

        self._undo.append(undo)

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __len__(self) -> int:
        return len(self._undo)
