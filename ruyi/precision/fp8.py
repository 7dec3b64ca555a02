"""Weight precision of the transformer: stored in FP8, computed in the pipeline's dtype.

The original's modes, by which ``nn.Linear`` / leaf modules keep FP8 storage:
- ``fp8_lite``: linear layers with more weights than hidden x hidden (the MLPs);
- ``fp8_strong``: linear layers with at least hidden x hidden weights (MLPs and attention projections);
- ``fp8_extreme``: every leaf with parameters except embeddings, norms and convolutions.
Each selected layer is upcast right before its forward by diffusers' layerwise-casting hook.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from diffusers.hooks.layerwise_casting import apply_layerwise_casting_hook

from ruyi.errors import ConfigError
from ruyi.extension import Extension
from ruyi.registry import PRECISIONS

log = logging.getLogger(__name__)

FP8_DTYPES = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
KEEP_CLASSES = (
    torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.Conv2d, torch.nn.Conv3d,
    torch.nn.modules.linear.NonDynamicallyQuantizableLinear,  # attention-pool projections, as the original
)  # fmt: skip


class WeightPrecision(Extension):
    """Base: ``apply(pipe)`` stores the transformer's chosen layers in FP8 (computed in the
    pipeline's dtype); ``convert(model, compute_dtype)`` does it to one model and returns how many
    layers it converted. Storage cannot be converted back: ``remove`` refuses."""

    stage = "precision"

    def apply(self, pipe) -> None:
        converted = self.convert(pipe.transformer, pipe.dtype)
        if converted:
            log.info("%s: %d transformer layers stored in FP8", self, converted)

    def remove(self, pipe) -> None:
        raise NotImplementedError(f"{self} converted weights in place; load the pipeline again to undo it")

    def convert(self, model: torch.nn.Module, compute_dtype: torch.dtype) -> int:
        raise NotImplementedError

    def stored_as(self, model: torch.nn.Module) -> dict[str, torch.dtype]:
        """``{parameter name: dtype}`` of the parameters ``convert`` stores in another dtype (the
        model may be on the meta device): a loader can write them so at once. None here."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@PRECISIONS.register("bf16")
class PipelineDtype(WeightPrecision):
    """No storage change: weights stay in the pipeline's dtype (bfloat16 on GPU)."""

    plain_weights = True  # fact for strategies that reshape weights (parallel.shard_weights)

    def convert(self, model: torch.nn.Module, compute_dtype: torch.dtype) -> int:
        return 0

    def remove(self, pipe) -> None:
        pass


class FP8Weights(WeightPrecision):
    def __init__(self, *, fp8_dtype: str = "e4m3fn") -> None:
        if fp8_dtype not in FP8_DTYPES:
            raise ConfigError(f"precision.fp8_dtype={fp8_dtype!r} is not one of {', '.join(FP8_DTYPES)}")
        self.fp8_dtype = fp8_dtype

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fp8_dtype={self.fp8_dtype})"

    def select(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        raise NotImplementedError

    def stored_as(self, model: torch.nn.Module) -> dict[str, torch.dtype]:
        # what the layerwise-casting hook's module.to(storage) casts: every floating parameter of the
        # chosen modules (already in the storage dtype, the cast keeps them where they are)
        storage = FP8_DTYPES[self.fp8_dtype]
        names = {id(m): n for n, m in model.named_modules()}
        return {
            f"{names[id(module)]}.{name}": storage
            for module in self.select(model)
            for name, param in module.named_parameters(recurse=False)
            if param.is_floating_point()
        }

    def convert(self, model: torch.nn.Module, compute_dtype: torch.dtype) -> int:
        storage = FP8_DTYPES[self.fp8_dtype]
        chosen = list(self.select(model))
        for module in chosen:
            apply_layerwise_casting_hook(module, storage, compute_dtype, non_blocking=False)
        return len(chosen)


def _square_size(model: torch.nn.Module) -> int:
    hidden = getattr(model, "hidden_size", None)
    if not isinstance(hidden, int):
        raise TypeError(f"{type(model).__name__} must expose an int hidden_size for the fp8_lite/strong rules")
    return hidden * hidden


def _leaves_with_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """Leaf modules owning parameters, except inside modules that read their children's weights
    directly (the model's ``_preload_module_classes``): a forward hook on such a child never runs."""
    whole = set(getattr(model, "_preload_module_classes", None) or ())
    opaque = [name for name, m in model.named_modules() if type(m).__name__ in whole]
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in opaque):
            continue
        if next(module.children(), None) is None and next(module.parameters(recurse=False), None) is not None:
            yield name, module


@PRECISIONS.register("fp8_lite")
class FP8Lite(FP8Weights):
    strict = True  # weights > hidden^2

    def select(self, model):
        limit = _square_size(model)
        for _, module in _leaves_with_weights(model):
            if isinstance(module, torch.nn.Linear):
                size = module.weight.numel()
                if size > limit or (not self.strict and size == limit):
                    yield module


@PRECISIONS.register("fp8_strong")
class FP8Strong(FP8Lite):
    strict = False  # weights >= hidden^2


@PRECISIONS.register("fp8_extreme")
class FP8Extreme(FP8Weights):
    def select(self, model):
        for _, module in _leaves_with_weights(model):
            if not isinstance(module, KEEP_CLASSES):
                yield module
