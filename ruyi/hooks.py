"""The one way ruyi changes a module's forward: diffusers' ``HookRegistry`` hooks, registered and
taken off together by :class:`ModuleHooks` (memory options, long-skip parking, TeaCache,
Enhance-A-Video, token sharding and CFG split all use it)."""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook


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

    @staticmethod
    def present(module: torch.nn.Module, name: str) -> bool:
        """Whether ``module`` already carries a hook registered under ``name``."""
        registry = getattr(module, "_diffusers_hook", None)
        return isinstance(registry, HookRegistry) and registry.get_hook(name) is not None

    def remove(self) -> None:
        while self._hooked:
            module, name = self._hooked.pop()
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                registry.remove_hook(name, recurse=False)
