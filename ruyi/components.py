"""The spec's parts: a registered component by name, and where a model's weights come from."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruyi.errors import ConfigError
from ruyi.registry import ALL_REGISTRIES


@dataclass(frozen=True)
class Component:
    """A registered component: its registry ``kind``, registered ``name`` and constructor options.

    ``instance`` carries an object a Python caller built itself (a plugin it wants to read back).
    """

    kind: str
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    instance: Any = None

    @classmethod
    def of(cls, kind: str, obj: Any) -> Component:
        """Wrap an already built object (its class must be registered under ``kind``)."""
        name = getattr(type(obj), "registry_name", None)
        if name is None:
            raise ConfigError(f"{kind} {obj!r} is not a registered component; register its class in ruyi.registry")
        return cls(kind, name, {}, obj)

    @property
    def cls(self) -> type:
        if self.instance is not None:
            return type(self.instance)
        return ALL_REGISTRIES[self.kind].get(self.name)

    def create(self, **context: Any) -> Any:
        """The object: the carried instance, or ``cls(**options, **context)`` (option errors are ConfigErrors)."""
        if self.instance is not None:
            return self.instance
        cls = self.cls
        try:
            return cls(**dict(self.options), **context)
        except TypeError as err:
            accepted = [p for p in inspect.signature(cls).parameters if p not in context]
            raise ConfigError(
                f"{self.kind}={self.name} got options {sorted(self.options)}: {err}; it accepts {', '.join(accepted) or 'none'}"
            ) from None

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in dict(self.options).items())
        return f"{self.name}({opts})" if opts else self.name


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a checkpoint folder, or a preset's shape for random weights.

    ``arch`` is the preset's architecture block (``transformer_arch``, ``vae_arch``,
    ``image_encoder_arch``, ``image_processor``, ``scheduler_config``, ``seed``): needed to create
    the tiny checkpoint and for random weights.
    """

    path: Path | None
    name: str = "model"
    repo_id: str | None = None
    create_if_missing: bool = False
    download: bool = False
    arch: Mapping[str, Any] | None = None
