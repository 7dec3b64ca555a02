"""What every offload strategy provides: attach to a pipeline from outside, and detach again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ruyi.errors import AcceleratorRequired
from ruyi.extension import Extension


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


@dataclass(frozen=True)
class HostCopies:
    """Copies of the weights a placement keeps in host memory while running (``memory=auto``'s host
    plan, :mod:`ruyi.memory.host`): of the transformer, of the VAE and image encoder, and whether
    the transformer is loaded straight into its copies (else it passes through host memory once)."""

    transformer: float = 0.0
    others: float = 1.0
    in_place: bool = False


class OffloadStrategy(Extension):
    """Base: ``apply(pipe)`` places the models for ``pipe.execution_device`` (the device the
    pipeline computes on, set by the assembly before anything attaches).

    Facts other components read (``Plan.has``): ``needs_accelerator`` (checked here),
    ``loads_per_block`` (a block's weights are on the device only inside its forward),
    ``keeps_weights_on_device`` (no streaming at all), ``loads_in_place`` (``weights_home`` puts
    the transformer straight where it stays: the host plan counts no loading copy).
    """

    stage = "offload"
    needs_accelerator = False
    loads_per_block = False
    keeps_weights_on_device = False

    def check(self, plan) -> None:
        """Before any weight loads: a strategy that needs CUDA fails on another device."""
        if self.needs_accelerator and plan.device.type != "cuda":
            raise AcceleratorRequired(self.accelerator_hint(plan.device))

    def accelerator_hint(self, device: torch.device) -> str:
        return f"offload={self.registry_name} needs a CUDA GPU, but the device is {device}; run on a GPU"

    def host_copies(self, plan) -> HostCopies:
        """None of the transformer (it moves to the device); the others counted once (on the safe side)."""
        return HostCopies()

    def weights_home(self, kind: str, plan):
        """Where model ``kind``'s weights should go as they are read (a
        :class:`ruyi.models.in_place.WeightsHome`), or None for the library's ``from_pretrained``."""

    def apply(self, pipe: Offloadable) -> None:
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
