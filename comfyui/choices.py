"""The nodes' dropdown choices, read from ruyi's registries, and the original's values as aliases.

Registries are the one list of choices: a sampler, offload strategy or precision mode registered by
another package shows up in the dropdowns without editing this file. The original project's
workflows saved other spellings ("none"/"lite"/... for FP8 modes, "auto"/"fp8_e4m3fn"/"fp8_e5m2" for
the FP8 storage type, scheduler labels such as "Euler A"); those stay accepted through the nodes'
``VALIDATE_INPUTS`` (ComfyUI then leaves those inputs' list check to the node), so the original's
saved workflows load and run unchanged while the dropdowns show one spelling per choice.

Nothing here imports ComfyUI; the registries are read when ComfyUI asks for a node's inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ruyi.errors import ConfigError, RuyiUserError

log = logging.getLogger(__name__)

# the original's fp8_quant_mode values -> ruyi's precision registry names
PRECISION_ALIASES = {"none": "bf16", "lite": "fp8_lite", "strong": "fp8_strong", "extreme": "fp8_extreme"}
# the original's fp8_data_type values ("auto" stored e4m3fn) -> ruyi's FP8 storage names
FP8_TYPE_ALIASES = {"auto": "e4m3fn", "fp8_e4m3fn": "e4m3fn", "fp8_e5m2": "e5m2"}
# the original's GPU_memory_mode values -> offload registry names; "from_model" keeps Load Model's
MEMORY_MODE_OFFLOAD = {"normal_mode": "model", "low_memory_mode": "sequential"}
FROM_MODEL = "from_model"
# the original's GPU_offload_steps choices (long-skip activations parked in groups of n; 0 = off)
GPU_OFFLOAD_STEPS = ("0", "1", "5", "7", "10")


def offloads() -> list[str]:
    from ruyi.registry import OFFLOADS

    return OFFLOADS.names()


def precisions() -> list[str]:
    from ruyi.registry import PRECISIONS

    return PRECISIONS.names()


def fp8_types() -> list[str]:
    from ruyi.precision.fp8 import FP8_DTYPES

    return list(FP8_DTYPES)


def sampler_labels() -> list[str]:
    """Each registered sampler's ``label`` (its registry name when it has none), in registry order."""
    from ruyi.registry import SAMPLERS

    return [_label(name) for name in SAMPLERS.names()]


def memory_modes() -> list[str]:
    return [FROM_MODEL, *MEMORY_MODE_OFFLOAD]


def control_choices(checkpoints: Iterable[str | Path] = ()) -> tuple[list[str], list[str]]:
    """(cameras, motions): the labels of every checkpoint folder given (the rows of their control
    tables; a model taught zoom_in adds it), Ruyi-Mini-7B's where none is on disk. A dropdown
    serves every model the Load Model node offers; the sampler refuses a label its model lacks in
    one line that names the labels it has."""
    from ruyi.conditioning.control import CAMERAS, MOTIONS, ordered
    from ruyi.registry import CONDITIONINGS

    cameras, motions = set(CAMERAS), list(MOTIONS)
    for folder in checkpoints:
        control = CONDITIONINGS.get("camera_motion")()
        try:
            cameras.update(control.read_labels(folder))  # the table's header only
        except RuyiUserError as err:  # a damaged file must not break ComfyUI's node list
            log.warning("[Ruyi] camera labels of %s: %s", folder, err)
        motions += [m for m in control.motions if m not in motions]
    return list(ordered(cameras)), motions


def _label(name: str) -> str:
    from ruyi.registry import SAMPLERS

    return getattr(SAMPLERS.get(name), "label", None) or name


# -- value -> registry name (aliases accepted), one-line ConfigErrors otherwise ----------------
def precision_name(value: str) -> str:
    return _registered("fp8_quant_mode", value, PRECISION_ALIASES, precisions())


def fp8_type_name(value: str) -> str:
    return _registered("fp8_data_type", value, FP8_TYPE_ALIASES, fp8_types())


def _registered(input_name: str, value: str, aliases: dict[str, str], names: list[str]) -> str:
    name = aliases.get(value, value)
    if name not in names:
        raise ConfigError(f"{input_name}={value!r} is not one of {', '.join(names)} (or the original's {', '.join(aliases)})")
    return name


def sampler_name(value: str) -> str:
    """A scheduler label ("Euler A") or registry name ("euler_a") -> the registry name."""
    from ruyi.registry import SAMPLERS
    from ruyi.samplers import sampler_by_label

    if value in SAMPLERS:
        return value
    try:
        return sampler_by_label(value).registry_name
    except KeyError:
        raise ConfigError(f"scheduler={value!r} is not one of {', '.join(sampler_labels())}") from None


def offload_name(memory_mode: str, model_offload: str) -> str:
    """The offload strategy a sampler run uses: the memory mode's, or Load Model's for from_model."""
    if memory_mode == FROM_MODEL:
        name = model_offload
    elif memory_mode in MEMORY_MODE_OFFLOAD:
        name = MEMORY_MODE_OFFLOAD[memory_mode]
    else:
        raise ConfigError(f"GPU_memory_mode={memory_mode!r} is not one of {', '.join(memory_modes())}")
    if name not in offloads():
        raise ConfigError(f"offload={name!r} is not one of {', '.join(offloads())}")
    return name


def validation_message(*checks) -> bool | str:
    """ComfyUI's VALIDATE_INPUTS answer: True, or the first failing check's one-line message."""
    for check, value in checks:
        try:
            check(value)
        except ConfigError as err:
            return str(err)
    return True
