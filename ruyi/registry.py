"""One typed registry per swappable component kind.

A component registers itself by decorator in its own module::

    @SAMPLERS.register("ddim")
    class DDIMSampler: ...

Hydra configs select a component by file stem (``configs/sampler/ddim.yaml``) and build it
through ``_target_``; callers without Hydra (the Python API, tests, ``--list``) use
``REGISTRY.get(name)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

# The modules whose decorators register the built-in components. Lookups import them on first use,
# so no caller has to remember to (the one registration point).
BUILTIN_MODULES = [
    "ruyi.models.transformer",
    "ruyi.models.vae",
    "ruyi.models.vae.pixel",
    "ruyi.models.image_encoder",
    "ruyi.samplers",
    "ruyi.conditioning",
    "ruyi.placement",
    "ruyi.precision",
    "ruyi.plugins",
    "ruyi.models.attention",
    "ruyi.compile",
    "ruyi.parallel",
    "ruyi.memory",
    "ruyi.eval",
    # training components (torch only at import; lightning and peft load when training starts)
    "ruyi.training.finetune",
    "ruyi.training.control",
    "ruyi.training.distill",
    "ruyi.training.data",
]
_builtins_state = {"loaded": False, "loading": False}


def load_builtins() -> None:
    """Import every module of ``BUILTIN_MODULES`` once (idempotent, safe during those imports)."""
    if _builtins_state["loaded"] or _builtins_state["loading"]:
        return
    _builtins_state["loading"] = True
    try:
        for name in BUILTIN_MODULES:
            importlib.import_module(name)
        _builtins_state["loaded"] = True
    finally:
        _builtins_state["loading"] = False


class Registry(Generic[T]):
    """A name -> class mapping for one component kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator that adds the class under ``name``; a second use of a name fails."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise KeyError(
                    f"{self.kind} {name!r} is already registered by "
                    f"{_qualname(self._entries[name])}; pick another name for {_qualname(obj)}"
                )
            self._entries[name] = obj
            obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return add

    def get(self, name: str) -> T:
        load_builtins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            from ruyi.errors import UnknownComponentError

            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise UnknownComponentError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        load_builtins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


TRANSFORMERS: Registry[type] = Registry("transformer")
VAES: Registry[type] = Registry("vae")
IMAGE_ENCODERS: Registry[type] = Registry("image_encoder")
SAMPLERS: Registry[type] = Registry("sampler")
CONDITIONINGS: Registry[type] = Registry("conditioning")
OFFLOADS: Registry[type] = Registry("offload")
PRECISIONS: Registry[type] = Registry("precision")
PLUGINS: Registry[type] = Registry("plugin")
ATTENTIONS: Registry[type] = Registry("attention")
COMPILES: Registry[type] = Registry("compile")
PARALLELS: Registry[type] = Registry("parallel")
MEMORIES: Registry[type] = Registry("memory")
FINETUNES: Registry[type] = Registry("finetune")
DATASETS: Registry[type] = Registry("data")
METRICS: Registry[type] = Registry("metric")

ALL_REGISTRIES: dict[str, Registry[type]] = {
    r.kind: r
    for r in (
        TRANSFORMERS, VAES, IMAGE_ENCODERS, SAMPLERS, CONDITIONINGS, OFFLOADS, PRECISIONS, PLUGINS, ATTENTIONS,
        COMPILES, PARALLELS, MEMORIES, FINETUNES, DATASETS, METRICS,
    )
}  # fmt: skip
