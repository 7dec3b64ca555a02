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


class ModuleHooks:
    """The hooks one option registered, all under one ``name``, so ``remove()`` takes each one off.

    Removing one leaves the hooks registered around it in place: diffusers relinks the chain. (An
    outer hook that defines ``new_forward`` would lose it in that relinking, in diffusers 0.42; the
    offload hooks outside ours define only ``pre_forward`` / ``post_forward``, and ``detach`` takes
    extensions off in the reverse order anyway.)
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._modules: list[torch.nn.Module] = []

    def register(self, module: torch.nn.Module, hook: ModelHook) -> None:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, self.name)
        self._modules.append(module)

    def remove(self) -> None:
        while self._modules:
            module = self._modules.pop()
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(self.name, recurse=False)

    def __len__(self) -> int:
        return len(self._modules)
