"""What every offload strategy provides: attach to a pipeline from outside, and detach again."""

from __future__ import annotations

from typing import Protocol

import torch

from ruyi.errors import AcceleratorRequired


class Offloadable(Protocol):
    """The part of a pipeline an offload strategy touches."""

    execution_device: torch.device

    @property
    def modules(self) -> dict[str, torch.nn.Module]: ...


def offload_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules whose ``forward`` a model's public methods call (``_offload_units``), or the
    model itself. Hooks on ``forward`` only fire for these: a VAE is used through encode/decode."""
    names = getattr(model, "_offload_units", None)
    return [model.get_submodule(n) for n in names] if names else [model]


class OffloadStrategy:
    """Base: ``apply(pipe, device)`` places the models and sets ``pipe.execution_device``."""

    needs_accelerator = False

    def apply(self, pipe: Offloadable, device: torch.device) -> None:
        raise NotImplementedError

    def remove(self, pipe: Offloadable) -> None:
        """Undo ``apply``: models end up on the CPU with no hooks."""
        from accelerate.hooks import remove_hook_from_module

        for module in pipe.modules.values():
            remove_hook_from_module(module, recurse=True)
            module.to("cpu")
        pipe.execution_device = torch.device("cpu")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda when present else cpu; a CUDA device that is absent is a clear error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AcceleratorRequired(
            f"device={device} was asked for but no CUDA GPU is visible; use device=cpu (slow) or run on a GPU"
        )
    return device
