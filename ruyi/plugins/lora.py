"""LoRA: merge low-rank weight deltas into the transformer, and take them out again.

Two key conventions are read:

- the original's (kohya style): ``lora_unet_<module path with '.' -> '_'>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha``; ``lora_te_*`` keys target a text encoder Ruyi does not have and
  are ignored with a warning;
- diffusers / peft: ``[transformer.|base_model.model.]<module path>.lora_A.weight`` /
  ``.lora_B.weight`` (and an optional ``.alpha``).

Merging adds ``strength * alpha / rank * up @ down`` (fp32) to each weight; unmerging subtracts the
same delta. peft's ``LoraLayer`` would wrap every targeted layer, which hooks and offload
strategies then see; merging into the plain weights keeps the model unchanged in structure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ruyi.checks import check_number
from ruyi.errors import InputError
from ruyi.registry import PLUGINS

log = logging.getLogger(__name__)

KOHYA_PREFIX, KOHYA_TEXT_PREFIX = "lora_unet_", "lora_te"
MAX_STRENGTH = 100.0  # the ComfyUI Load LoRA node's range; useful values are about -2..2
PEFT_PREFIXES = ("base_model.model.", "transformer.")
SUFFIXES = {  # key ending -> factor name
    ".lora_down.weight": "down", ".lora_up.weight": "up",
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".alpha": "alpha",
}  # fmt: skip


@dataclass
class LoRALayer:
    """One target layer: down (rank, in[, kh, kw]), up (out, rank[, 1, 1]), alpha or None (= rank)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """alpha/rank * up @ down in float32, shaped like the weight (Linear, or Conv2d with a 1x1 up)."""
        rank = self.down.shape[0]
        scale = 1.0 if self.alpha is None else self.alpha / rank
        up, down = self.up.to(device, torch.float32).flatten(1), self.down.to(device, torch.float32).flatten(1)
        return (scale * (up @ down)).reshape(shape)


def split_key(key: str) -> tuple[str, str] | None:
    """``(layer, factor)`` of a LoRA key (``factor`` in up/down/alpha), or None for another key."""
    ending = next((s for s in SUFFIXES if key.endswith(s)), None)
    return None if ending is None else (key[: -len(ending)], SUFFIXES[ending])


def check_key_names(keys: list[str], where: str) -> None:
    """Every key must follow one of the two conventions (checked from the file header alone)."""
    unknown = [key for key in keys if split_key(key) is None]
    if unknown:
        raise InputError(
            f"{where}: {len(unknown)} LoRA keys follow neither the lora_down/lora_up nor the lora_A/lora_B "
            f"convention, e.g. {unknown[:3]}; is this a LoRA file?"
        )


def read_lora(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, where: str = "LoRA") -> dict[str, LoRALayer]:
    """LoRA tensors -> {module path in ``model``: LoRALayer}; errors name unknown, unmatched or
    mis-shaped keys."""
    by_underscored = {name.replace(".", "_"): name for name, _ in model.named_modules() if name}
    check_key_names(list(state_dict), where)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    text_encoder = 0
    for key, tensor in state_dict.items():
        layer, factor = split_key(key)  # type: ignore[misc]
        if layer.startswith(KOHYA_TEXT_PREFIX):
            text_encoder += 1
            continue
        if layer.startswith(KOHYA_PREFIX):
            # the original walks attributes greedily; a table of every module path with '.' -> '_'
            # resolves the same names (no two module paths of this transformer collide that way)
            name = by_underscored.get(layer[len(KOHYA_PREFIX) :], layer)
        else:
            name = next((layer[len(p) :] for p in PEFT_PREFIXES if layer.startswith(p)), layer)
        factors.setdefault(name, {})[factor] = tensor
    if text_encoder:
        log.warning("ignoring %d text-encoder LoRA tensors (lora_te*): Ruyi has no text encoder", text_encoder)
    modules = dict(model.named_modules())
    missing = sorted(n for n in factors if n not in modules or not isinstance(getattr(modules[n], "weight", None), torch.Tensor))
    if missing:
        matched = len(factors) - len(missing)
        raise InputError(f"{where}: {len(missing)} of {len(factors)} LoRA layers match no transformer weight ({matched} do), e.g. {missing[:3]}")
    layers = {}
    for name, f in factors.items():
        if "up" not in f or "down" not in f:
            raise InputError(f"{where}: LoRA layer {name!r} lacks its {'up' if 'up' not in f else 'down'} matrix")
        _check_shapes(name, f["up"], f["down"], modules[name].weight, where)
        layers[name] = LoRALayer(down=f["down"], up=f["up"], alpha=float(f["alpha"]) if "alpha" in f else None)
    if not layers:
        raise InputError(f"{where}: the LoRA file holds no transformer layers")
    return layers


def _check_shapes(name: str, up: torch.Tensor, down: torch.Tensor, weight: torch.Tensor, where: str) -> None:
    """up (out, rank[, 1, 1]) @ down (rank, in[, kh, kw]) must give the weight's shape."""
    fits = (
        up.ndim >= 2 and down.ndim >= 2 and up.is_floating_point() and down.is_floating_point()
        and up.shape[0] == weight.shape[0] and up.shape[1] == down.shape[0]
        and up[0].numel() == up.shape[1] and down[0].numel() == weight[0].numel()
    )  # fmt: skip
    if not fits:
        raise InputError(
            f"{where}: LoRA layer {name!r} has up {tuple(up.shape)} {up.dtype} and down {tuple(down.shape)} {down.dtype}, "
            f"which do not fit its weight {tuple(weight.shape)}; is this LoRA for another model?"
        )


@PLUGINS.register("lora")
class LoRAWeights:
    """One LoRA file merged at ``strength`` (the original suggests 1.0-1.4). Several LoRAs are
    several instances; unmerging in any order restores the weights (up to fp32 rounding of the
    weight dtype: exact round trips need float32 weights)."""

    def __init__(self, *, path: str | Path, strength: float = 1.0) -> None:
        path = Path(path)
        if path.suffix != ".safetensors":
            raise InputError(f"lora path {path} must be a .safetensors file")
        if not path.is_file():
            raise InputError(f"lora file {path} does not exist")
        strength = check_number("lora strength", strength, low=-MAX_STRENGTH, high=MAX_STRENGTH,
                                hint="the original suggests 1.0-1.4")  # fmt: skip
        self.path, self.strength = path, strength
        self.layers: dict[str, LoRALayer] = {}
        self._merged_into: torch.nn.Module | None = None

    def __repr__(self) -> str:
        return f"LoRAWeights(path={str(self.path)!r}, strength={self.strength})"

    def check(self, plan) -> None:
        """Before any weight loads: the file is a readable safetensors file whose keys are LoRA keys."""
        try:
            with safe_open(str(self.path), framework="pt") as f:
                keys = list(f.keys())
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise InputError(
                f"lora file {self.path} is not a readable safetensors file ({type(err).__name__}: {err}); "
                "re-download or re-export it"
            ) from None
        check_key_names(keys, f"lora file {self.path}")

    def attach(self, pipe) -> None:
        self.merge(pipe.transformer)

    def detach(self, pipe) -> None:
        self.unmerge(pipe.transformer)

    def merge(self, model: torch.nn.Module) -> int:
        """Add the deltas to ``model``'s weights; returns the number of layers changed."""
        if self._merged_into is not None:
            raise ValueError(f"{self} is already merged; unmerge it first")
        self.layers = read_lora(load_file(str(self.path)), model, f"lora file {self.path}")
        self._apply(model, self.strength)
        self._merged_into = model
        log.info("merged %s into %d layers", self, len(self.layers))
        return len(self.layers)

    def unmerge(self, model: torch.nn.Module) -> None:
        if self._merged_into is not model:
            raise ValueError(f"{self} is not merged into this model")
        self._apply(model, -self.strength)
        self._merged_into = None

    @torch.no_grad()
    def _apply(self, model: torch.nn.Module, factor: float) -> None:
        modules = dict(model.named_modules())
        for name, layer in self.layers.items():
            weight = modules[name].weight
            if not weight.is_floating_point() or weight.element_size() < 2:
                raise ValueError(f"{name}.weight is stored as {weight.dtype}; merge LoRAs before an FP8 precision strategy")
            merged = weight.float() + factor * layer.delta(weight.shape, weight.device)
            weight.copy_(merged.to(weight.dtype))
