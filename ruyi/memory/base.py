"""What every memory option shares: the ``memory`` stage, and diffusers hooks on the forwards it changes.

A memory option changes how much activation memory the models hold, never what they compute. It
registers a diffusers ``ModelHook`` on chosen module instances (the model files stay as they are)
under its own name and takes them off again on ``remove``. Offload hooks attach later (``STAGES``:
memory before offload), so in each module's ``HookRegistry`` they sit outside ours: an offload
hook places the weights once, then ours may call the forward several times (slice by slice, item
by item) before the offload hook takes them away again.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ruyi.extension import Extension


class MemoryOption(Extension):
    """Base: ``check(plan)`` before any weight loads, ``apply(pipe)`` / ``remove(pipe)`` after.

    Facts read by others through ``Plan.has``: ``splits_batch`` (the guidance halves run one after
    another, so anything taking statistics over the whole batch would change).
    """

    stage = "memory"
    splits_batch = False


class PassThrough(ModelHook):
    """Registered directly below a ``new_forward`` hook: when a hook under both comes off, diffusers'
    ``remove_hook`` re-points the hook right above the removed one at the chain below, which would
    drop a ``new_forward`` hook sitting there (diffusers 0.42); this plain hook takes that instead."""


class ModuleHooks:
    """The hooks one option registered, all under one ``name``, so ``remove()`` takes each one off
    (hooks registered around them stay in place)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._hooked: list[tuple[torch.nn.Module, str]] = []  # (module, hook name), in registration order

    def register(self, module: torch.nn.Module, hook: ModelHook) -> None:
        registry = HookRegistry.check_if_exists_or_initialize(module)
        if hasattr(hook, "new_forward"):
            registry.register_hook(PassThrough(), f"{self.name}.guard")
            self._hooked.append((module, f"{self.name}.guard"))
        registry.register_hook(hook, self.name)
        self._hooked.append((module, self.name))

    def remove(self) -> None:
        while self._hooked:
            module, name = self._hooked.pop()
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                registry.remove_hook(name, recurse=False)
