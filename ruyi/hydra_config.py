"""Composed Hydra config -> the fields of :class:`ruyi.assembly.PipelineSpec`, and the call's
request (its arguments and start/end images).

Each component group's node names its class by ``_target_`` (which Hydra resolves and imports, so a
user's own module registers itself); the class must be registered under that group's kind, and the
node's other keys are its constructor options. Plugins are the registered ``PLUGINS`` whose group
is selected (``teacache=on``), plus the ``lora`` list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruyi.components import Component, ModelSource, container as _container
from ruyi.errors import ConfigError
from ruyi.registry import ALL_REGISTRIES, PLUGINS

# config group -> registry kind, for the spec's single components
GROUPS = {
    "transformer": "transformer", "vae": "vae", "image_encoder": "image_encoder", "sampler": "sampler",
    "offload": "offload", "precision": "precision",
}  # fmt: skip
EXTRA_GROUPS = ("attention", "compile", "parallel", "memory")


def plugin_components(cfg: Any) -> tuple:
    """The ``lora`` list entries, then every selected plugin group in registry order."""
    from collections.abc import Iterable, Mapping

    plugins = []
    loras = cfg.get("lora") or []
    if isinstance(loras, (str, Mapping)) or not isinstance(loras, Iterable):
        raise ConfigError("lora must be a list of {path: file.safetensors, strength: 1.2}")
    for entry in loras:
        entry = _container(entry) if not isinstance(entry, dict) else entry
        if not isinstance(entry, Mapping) or "path" not in entry or set(entry) - {"path", "strength"}:
            raise ConfigError(f"lora entry {entry!r} must be {{path: file.safetensors, strength: 1.2}}")
        plugins.append(Component("plugin", "lora", {"path": _absolute(entry["path"]), "strength": entry.get("strength", 1.0)}))
    # registered plugins by name, then any other top-level node that names a class: a plugin from
    # the user's own module (hydra.searchpath) registers itself when Hydra imports it here
    known = set(GROUPS) | set(EXTRA_GROUPS) | {"model", "conditioning", "lora"}
    extra = [k for k in cfg if k not in known and k not in PLUGINS.names() and _names_a_plugin(cfg.get(k))]
    for name in [*PLUGINS.names(), *extra]:
        node = cfg.get(name) if name != "lora" else None
        if node is not None:
            plugins.append(Component.from_node("plugin", node, name))
    return tuple(plugins)


def _names_a_plugin(node: Any) -> bool:
    """Whether a config node's ``_target_`` is a registered plugin class (importing it registers it)."""
    from collections.abc import Mapping

    from hydra.utils import get_class
    from omegaconf import DictConfig

    if not isinstance(node, (Mapping, DictConfig)) or "_target_" not in node:
        return False
    try:
        cls = get_class(str(node["_target_"]))
    except Exception:  # noqa: BLE001 - not importable: not a plugin (its own group reports it)
        return False
    name = getattr(cls, "registry_name", None)
    return name in PLUGINS and PLUGINS.get(name) is cls


def preset_components(preset: dict[str, Any]) -> dict[str, Component]:
    """The model preset's ``components`` (``{vae: pixel_patch}``): the classes its checkpoint was
    made with, which take the place of the groups' defaults (``vae: magvit``)."""
    chosen = preset.get("components") or {}
    if not isinstance(chosen, dict):
        raise ConfigError(f"model.components={chosen!r} must map a kind to a registered name, e.g. {{vae: pixel_patch}}")
    found = {}
    for field, name in chosen.items():
        kind = GROUPS.get(field)
        if kind is None:
            raise ConfigError(f"model.components.{field}: not a component group ({', '.join(GROUPS)})")
        registry = ALL_REGISTRIES[kind]
        if name not in registry:
            raise ConfigError(f"model.components.{field}={name!r} is not registered (registered: {', '.join(registry.names())})")
        found[field] = Component(kind, name)
    return found


def spec_fields(cfg: Any) -> dict[str, Any]:
    """The keyword arguments of ``PipelineSpec`` for a composed config."""
    preset = _container(cfg.model)
    model = model_source(preset, download=bool(cfg.get("download", False)))
    # a group the entry point does not have (train.yaml: no offload) keeps the spec's default
    components = {field: Component.from_node(kind, cfg[field], field) for field, kind in GROUPS.items() if cfg.get(field) is not None}
    components.update(preset_components(preset))
    strategies = tuple(
        Component.from_node(group, cfg[group], group)
        for group in EXTRA_GROUPS
        if group in ALL_REGISTRIES and cfg.get(group) is not None
    )
    return dict(
        model=model,
        **components,
        image_conditioning=Component.from_node("conditioning", cfg.conditioning.image, "conditioning/image"),
        control=Component.from_node("conditioning", cfg.conditioning.control, "conditioning/control"),
        strategies=strategies,
        plugins=plugin_components(cfg),
        skip_steps=cfg.get("skip_steps", 0),
        vae_tile_size=cfg.get("vae_tile_size", 0),
        vae_tile_overlap=cfg.get("vae_tile_overlap", 96),
        device=str(cfg.get("device", "auto")),
        dtype=str(cfg.get("dtype", "float32")),
    )


def request_kwargs(cfg: Any) -> dict[str, Any]:
    """The call's arguments as the config gives them (checked by ``validate_request``)."""
    from omegaconf import ListConfig

    video_size = cfg.video_size
    if isinstance(video_size, ListConfig):
        video_size = list(video_size)
    return dict(
        frames=cfg.frames, base_resolution=cfg.base_resolution, video_size=video_size, steps=cfg.steps,
        cfg=cfg.cfg, seed=cfg.seed, camera=cfg.camera, motion=str(cfg.motion),
    )  # fmt: skip


def request_images(cfg: Any):
    """The start image (a path, or the procedural picture when ``image`` is null) and the end image."""
    from hydra.utils import to_absolute_path

    from ruyi.io import procedural_image

    start = to_absolute_path(str(cfg.image)) if cfg.image is not None else procedural_image()
    end = to_absolute_path(str(cfg.end_image)) if cfg.end_image is not None else None
    return start, end


def job_overrides() -> list[str]:
    """This Hydra job's own task overrides ([] outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


PACKAGE_PREFIX = "pkg://ruyi/"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    """``configs/model/<name>.yaml`` as a dict, its ``path`` made absolute (``pkg://`` resolved)."""
    import yaml

    file = CONFIGS / "model" / f"{name}.yaml"
    if not file.is_file():
        raise ConfigError(f"model preset {name!r} does not exist; presets: {', '.join(preset_names())}")
    preset = yaml.safe_load(file.read_text())
    # a preset may build on others as Hydra composes it (``defaults: [ruyi_tiny_pans, _self_]``): theirs, then its own keys
    bases = preset.pop("defaults", None) or []
    if [b for b in bases if not isinstance(b, str)] or (bases and bases[-1] != "_self_"):
        raise ConfigError(f"configs/model/{name}.yaml: its defaults must be preset names followed by _self_")
    for base in reversed(bases[:-1]):
        preset = _merged(load_preset(base), preset)
    if preset.get("path"):
        preset["path"] = _absolute(preset["path"])
    return preset


def _merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``own`` over ``base``, nested mappings merged key by key (lists replaced), as OmegaConf merges."""
    out = dict(base)
    for key, value in own.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def model_source(preset: dict[str, Any], *, download: bool = False) -> ModelSource:
    path = preset.get("path")
    return ModelSource(
        path=Path(_absolute(path)) if path else None,
        name=str(preset.get("name", "model")),
        repo_id=preset.get("repo_id"),
        create_if_missing=bool(preset.get("create_if_missing", False)),
        download=download,
        arch=preset,
    )


def _absolute(path: str) -> str:
    """Relative to where the user started the job, even if Hydra changed directory;
    ``pkg://ruyi/<path>`` is inside the installed package (its shipped assets)."""
    from hydra.utils import to_absolute_path

    path = str(path)
    if path.startswith(PACKAGE_PREFIX):
        return str(Path(__file__).resolve().parent / path[len(PACKAGE_PREFIX) :])
    return to_absolute_path(path)
