"""Composed Hydra config -> the fields of :class:`ruyi.assembly.PipelineSpec`, and the call's
request (its arguments and start/end images).

Each component group's node names its class by ``_target_`` (which Hydra resolves and imports, so a
user's own module registers itself); the class must be registered under that group's kind, and the
node's other keys are its constructor options. Plugins are the ``plugin`` list
(``plugin=[teacache,enhance_a_video]``), plus the ``lora`` list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruyi.components import Component, ModelSource, container as _container
from ruyi.errors import ConfigError
from ruyi.registry import ALL_REGISTRIES

# config group -> registry kind, for the spec's single components
GROUPS = {
    "transformer": "transformer", "vae": "vae", "image_encoder": "image_encoder", "sampler": "sampler",
    "offload": "offload", "precision": "precision",
}  # fmt: skip
EXTRA_GROUPS = ("attention", "compile", "parallel", "memory")


def plugin_components(cfg: Any) -> tuple:
    """The ``lora`` list entries, then the ``plugin`` list in the order chosen
    (``plugin=[teacache,enhance_a_video]``: each a ``configs/plugin/<name>.yaml`` whose node names
    its registered class; a user's own from ``hydra.searchpath`` registers itself when imported)."""
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
    chosen = cfg.get("plugin") or {}
    for name in chosen:
        component = Component.from_node("plugin", chosen[name], f"plugin.{name}")
        if component.name == "lora" and isinstance(component.options.get("path"), str):
            component = Component("plugin", "lora", {**component.options, "path": _absolute(component.options["path"])})
        plugins.append(component)
    return tuple(plugins)


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
    """The call's arguments as the config gives them (checked by ``validate_request``). With
    ``video=`` and no ``frames`` of the user's (still the preset's interpolation), the output takes
    the input's frame count (``frames=None``)."""
    from hydra.utils import to_absolute_path
    from omegaconf import OmegaConf

    from ruyi.conditioning.keyframes import DEFAULT_OVERLAP_FRAMES

    video = cfg.get("video")
    frames = cfg.frames
    if video is not None and OmegaConf.is_interpolation(cfg, "frames"):
        frames = None
    segment = cfg.get("segment") or {}
    return dict(
        frames=frames, base_resolution=cfg.base_resolution, video_size=_plain(cfg.video_size), steps=cfg.steps,
        cfg=cfg.cfg, seed=cfg.seed, camera=_plain(cfg.camera), motion=_motion(cfg.motion),
        keyframes=request_keyframes(cfg), video=None if video is None else to_absolute_path(str(video)),
        strength=cfg.get("strength", 0.6), segment_frames=segment.get("frames", 120), overlap=segment.get("overlap", 2),
        overlap_frames=segment.get("overlap_frames", DEFAULT_OVERLAP_FRAMES),
    )  # fmt: skip


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (ListConfig, DictConfig)) else value


def _motion(motion: Any) -> Any:
    """``motion=2`` and ``motion=[2,3]`` alike as text (the control's choices are strings)."""
    motion = _plain(motion)
    return [str(m) for m in motion] if isinstance(motion, list) else str(motion)


def request_keyframes(cfg: Any) -> list:
    """``keyframes`` entries with their image paths made absolute (checked by ``validate_request``)."""
    entries = _plain(cfg.get("keyframes")) or []
    if not isinstance(entries, list):
        return entries  # reported by the check, with the usage
    return [{**e, "image": _absolute(e["image"])} if isinstance(e, dict) and isinstance(e.get("image"), str) else e
            for e in entries]  # fmt: skip


def request_images(cfg: Any):
    """The start image (a path; the procedural picture when ``image`` is null and neither
    keyframes nor an input video give the video its frames) and the end image."""
    from hydra.utils import to_absolute_path

    from ruyi.io import procedural_image

    given = bool(cfg.get("keyframes")) or cfg.get("video") is not None
    start = to_absolute_path(str(cfg.image)) if cfg.image is not None else None if given else procedural_image()
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
