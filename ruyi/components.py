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

    @classmethod
    def from_node(cls, kind: str, node: Any, where: str) -> Component:
        """From a config node with ``_target_`` (Hydra imports the module, so a user's own class
        registers itself); the class must be registered as ``kind``, the node's other keys are its
        constructor options. The one way from config to object: pipeline components, plugins,
        metrics, datasets and fine-tuning methods all come through here."""
        from hydra.utils import get_class

        options = container(node)
        target = options.pop("_target_", None)
        if not target:
            raise ConfigError(f"{where} has no _target_; it must name a registered {kind} class")
        try:
            found = get_class(target)
        except Exception as err:  # noqa: BLE001 - Hydra wraps import failures in several types
            raise ConfigError(f"{where}: cannot import {target} ({err})") from None
        name = getattr(found, "registry_name", None)
        registry = ALL_REGISTRIES[kind]
        if name is None or name not in registry or registry.get(name) is not found:
            raise ConfigError(
                f"{where}: {target} is not a registered {kind}; decorate it with @{kind.upper()}S.register(name) "
                f"(registered: {', '.join(registry.names())})"
            )
        return cls(kind, name, options)

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


def container(node: Any) -> dict[str, Any]:
    """A config node (OmegaConf or mapping) as a plain dict, interpolations resolved."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # a Python caller without Hydra passes plain mappings
        return dict(node)
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


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
