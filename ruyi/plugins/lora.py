"""LoRA: merge low-rank weight deltas into the transformer, and take them out again.

Two key conventions are read:

- the original's (kohya style): ``lora_unet_<module path with '.' -> '_'>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha``. EasyAnimate's training code, whose files the original loads,
  names the transformer root as an empty module path, so its keys start ``lora_unet__blocks_...``;
  both spellings resolve. ``lora_te_*`` keys target a text encoder Ruyi does not have and are
  ignored with a warning. Without ``.alpha`` a layer merges at scale 1, as the original does;
- diffusers / peft: ``[transformer.|base_model.model.]<module path>.lora_A.weight`` /
  ``.lora_B.weight`` (and an optional ``.alpha``). Such files usually carry no alpha: the scale
  ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA, per layer with ``alpha_pattern``) comes from
  peft's ``adapter_config.json`` beside the file, or from the ``lora_adapter_metadata`` that
  diffusers writes into the safetensors header. With neither, scale 1 (peft's defaults, r = alpha)
  is assumed and logged.

Files are checked by value before anything merges: non-finite factors, an alpha that is not one
finite number, and down/up ranks that differ are refused in one line naming the layer (a NaN LoRA
would otherwise give an all-black video and exit 0); a merge that would overflow the weights'
dtype is undone and refused too. A LoRA that ``scripts/train.py`` exported records the model it
was trained for in its header (:func:`base_model_metadata`); with another model it is refused
before any weight loads, naming the ``model=`` to use (files without the record load as before).

Merging adds ``strength * alpha / rank * up @ down`` (fp32) to each weight; unmerging subtracts the
same delta. peft's ``LoraLayer`` would wrap every targeted layer, which hooks and offload
strategies then see; merging into the plain weights keeps the model unchanged in structure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ruyi.checks import check_number
from ruyi.errors import ConfigError, InputError
from ruyi.extension import Extension
from ruyi.registry import PLUGINS

log = logging.getLogger(__name__)

KOHYA_PREFIX, KOHYA_TEXT_PREFIX = "lora_unet_", "lora_te"
MAX_STRENGTH = 100.0  # the ComfyUI Load LoRA node's range; useful values are about -2..2
PEFT_PREFIXES = ("base_model.model.", "transformer.")
ADAPTER_CONFIG = "adapter_config.json"  # peft's save_pretrained writes it beside adapter_model.safetensors
METADATA_KEY = "lora_adapter_metadata"  # diffusers' save_lora_weights puts the LoraConfig here
# what an exported LoRA's header says about the model it was trained for
MODEL_NAME_KEY, MODEL_PRESET_KEY, MODEL_CONFIG_KEY = "ruyi_model", "ruyi_model_preset", "ruyi_transformer_config"
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


def read_lora(
    state_dict: dict[str, torch.Tensor],
    model: torch.nn.Module,
    adapter_config: Mapping[str, Any] | None = None,
    where: str = "LoRA",
) -> dict[str, LoRALayer]:
    """LoRA tensors -> {module path in ``model``: LoRALayer}; errors name unknown, unmatched or
    mis-shaped keys.

    ``adapter_config`` (peft's LoraConfig as a dict: ``r``, ``lora_alpha``, ``use_rslora``,
    ``alpha_pattern``) gives the scale of lora_A/lora_B layers that carry no ``.alpha`` tensor.
    """
    by_underscored = {name.replace(".", "_"): name for name, _ in model.named_modules() if name}
    check_key_names(list(state_dict), where)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    text_encoder = 0
    peft_named: set[str] = set()
    for key, tensor in state_dict.items():
        layer, factor = split_key(key)  # type: ignore[misc]
        if layer.startswith(KOHYA_TEXT_PREFIX):
            text_encoder += 1
            continue
        if layer.startswith(KOHYA_PREFIX):
            # the original walks attributes greedily, skipping empty names (hence lora_unet__...); a
            # table of every module path with '.' -> '_' resolves the same names (no two module
            # paths of this transformer collide that way)
            underscored = layer[len(KOHYA_PREFIX) :].lstrip("_")
            name = by_underscored.get(underscored, underscored)
        else:
            name = next((layer[len(p) :] for p in PEFT_PREFIXES if layer.startswith(p)), layer)
            peft_named.add(name)
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
        _check_values(name, f, where)
        _check_shapes(name, f["up"], f["down"], modules[name].weight, where)
        if "alpha" in f:
            alpha = float(f["alpha"].reshape(()))
        elif name in peft_named and adapter_config is not None:
            alpha = peft_alpha(adapter_config, name, rank=f["down"].shape[0])
        else:
            alpha = None
        layers[name] = LoRALayer(down=f["down"], up=f["up"], alpha=alpha)
    if not layers:
        raise InputError(f"{where}: the LoRA file holds no transformer layers")
    return layers


def _check_values(name: str, factors: Mapping[str, torch.Tensor], where: str) -> None:
    """Ranks that agree, finite factors, one finite alpha: checked by value before any layer merges."""
    up, down = factors["up"], factors["down"]
    if up.ndim >= 2 and down.ndim >= 1 and up.shape[1] != down.shape[0]:
        raise InputError(
            f"{where}: LoRA layer {name!r} has rank {down.shape[0]} in its down matrix {tuple(down.shape)} but "
            f"{up.shape[1]} in its up matrix {tuple(up.shape)}; the file is damaged: re-export it"
        )
    for factor in ("down", "up"):
        tensor = factors[factor]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(
                f"{where}: LoRA layer {name!r} holds {bad} NaN or infinite values in its {factor} matrix; "
                "the training diverged or the file is damaged: use another LoRA"
            )
    alpha = factors.get("alpha")
    if alpha is not None:
        if alpha.numel() != 1:
            raise InputError(
                f"{where}: LoRA layer {name!r} has an alpha of shape {tuple(alpha.shape)}; alpha must be one number"
            )
        if alpha.dtype == torch.bool or alpha.is_complex():
            raise InputError(f"{where}: LoRA layer {name!r} has an alpha of type {alpha.dtype}; alpha must be a number")
        if not math.isfinite(float(alpha.reshape(()))):
            raise InputError(f"{where}: LoRA layer {name!r} has alpha={float(alpha.reshape(()))}; alpha must be finite")


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


def peft_alpha(config: Mapping[str, Any], name: str, *, rank: int) -> float:
    """The alpha that gives peft's scale for layer ``name``: ``scale * rank`` where peft's scale is
    ``lora_alpha / r`` (rsLoRA: ``/ sqrt(r)``), ``lora_alpha`` overridden per layer by
    ``alpha_pattern`` (patterns match a suffix of the module path, as in peft)."""
    if config.get("use_dora"):
        raise InputError("DoRA adapters (use_dora) cannot be merged as plain low-rank deltas; merge them with peft first")
    alpha = float(config.get("lora_alpha", rank))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            alpha = float(value)
            break
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return scale * rank


def adapter_config_for(path: Path) -> dict[str, Any] | None:
    """peft's LoraConfig of a LoRA file: ``adapter_config.json`` beside it, else diffusers'
    ``lora_adapter_metadata`` in its header (keys may carry a ``transformer.`` prefix), else None."""
    beside = path.with_name(ADAPTER_CONFIG)
    if beside.is_file():
        try:
            return json.loads(beside.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{beside} is not valid JSON ({err}); fix or remove it") from None
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise InputError(f"{path}: its {METADATA_KEY} header is not valid JSON") from None
    return {k.removeprefix("transformer."): v for k, v in meta.items()}


def config_hash(config: Mapping[str, Any]) -> str:
    """A short identity of a transformer ``config.json``: the architecture a LoRA's shapes fit (fields
    starting with ``_``, such as the writer's version, are left out)."""
    kept = {k: v for k, v in config.items() if not str(k).startswith("_")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _config_of(source: str | Path | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A transformer config: given, or read from a checkpoint's ``transformer`` folder (None if absent)."""
    if source is None or isinstance(source, Mapping):
        return source
    path = Path(source) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def preset_of(name: str) -> str:
    """``Ruyi-Mini-7B`` -> ``ruyi_mini_7b``: a preset's config-group name from its model name."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def base_model_metadata(
    name: str, transformer_config: str | Path | Mapping[str, Any] | None, *, preset: str | None = None
) -> dict[str, str]:
    """What an exported LoRA records about the model it was trained on: the preset (``model=``), the
    model's name and the identity of its transformer config (a checkpoint's ``transformer`` folder
    or the config itself)."""
    meta = {MODEL_NAME_KEY: str(name), MODEL_PRESET_KEY: preset or preset_of(str(name))}
    config = _config_of(transformer_config)
    if config is not None:
        meta[MODEL_CONFIG_KEY] = config_hash(config)
    return meta


def check_base_model(meta: Mapping[str, str], *, name: str, transformer_folder: str | Path | None, where: str) -> bool:
    """Refuse a LoRA recorded for another model. The config identity decides where the checkpoint's
    config is readable (a fine-tuned copy of the same model is the same model); else the model name.
    Returns whether the config identity could be compared."""
    recorded = meta.get(MODEL_CONFIG_KEY)
    config = _config_of(transformer_folder)
    compared = recorded is not None and config is not None
    if compared:
        differs = config_hash(config) != recorded  # type: ignore[arg-type]
    else:
        differs = MODEL_NAME_KEY in meta and meta[MODEL_NAME_KEY] != name
    if differs:
        preset = meta.get(MODEL_PRESET_KEY) or preset_of(meta.get(MODEL_NAME_KEY, "?"))
        raise InputError(
            f"{where} was trained for model={preset} ({meta.get(MODEL_NAME_KEY, 'another model')}, transformer "
            f"config {recorded or 'unknown'}), not for this {name}; pass model={preset} (and its model.path), "
            "or use a LoRA trained for this model"
        )
    return compared


@PLUGINS.register("lora")
class LoRAWeights(Extension):
    """One LoRA file merged at ``strength`` (the original suggests 1.0-1.4). Several LoRAs are
    several instances; unmerging in any order restores the weights (up to fp32 rounding of the
    weight dtype: exact round trips need float32 weights)."""

    stage = "plugins"
    changes_weights = True  # merged into the loaded values (offload=group then loads them plainly)

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
        self._meta: dict[str, str] = {}
        self._base_checked = False

    def __repr__(self) -> str:
        return f"LoRAWeights(path={str(self.path)!r}, strength={self.strength})"

    def check(self, plan) -> None:
        """Before any weight loads: the file is a readable safetensors file whose keys are LoRA keys."""
        try:
            with safe_open(str(self.path), framework="pt") as f:
                keys = list(f.keys())
                self._meta = dict(f.metadata() or {})
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise InputError(
                f"lora file {self.path} is not a readable safetensors file ({type(err).__name__}: {err}); "
                "re-download or re-export it"
            ) from None
        check_key_names(keys, f"lora file {self.path}")
        model = plan.spec.model
        folder = model.path / "transformer" if model.path is not None else None
        # a checkpoint still to be created has no config.json yet: attach() compares it then
        self._base_checked = check_base_model(self._meta, name=model.name, transformer_folder=folder,
                                              where=f"lora file {self.path}")  # fmt: skip

    def apply(self, pipe) -> None:
        path = getattr(pipe, "model_path", None)
        if self._meta and not self._base_checked and path is not None:
            name = self._meta.get(MODEL_NAME_KEY, "")  # only the config identity can differ now
            check_base_model(self._meta, name=name, transformer_folder=Path(path) / "transformer",
                             where=f"lora file {self.path}")  # fmt: skip
        self.merge(pipe.transformer)

    def remove(self, pipe) -> None:
        self.unmerge(pipe.transformer)

    def merge(self, model: torch.nn.Module) -> int:
        """Add the deltas to ``model``'s weights; returns the number of layers changed."""
        if self._merged_into is not None:
            raise ConfigError(f"{self} is already merged; unmerge it first")
        state = load_file(str(self.path))
        config = adapter_config_for(self.path)
        if config is None and any(k.endswith(".lora_A.weight") for k in state) and not any(k.endswith(".alpha") for k in state):
            log.info("%s: no alpha and no adapter config; merging at scale 1 (peft's default r = lora_alpha)", self.path)
        self.layers = read_lora(state, model, config, f"lora file {self.path}")
        self._apply(model, self.strength)
        self._merged_into = model
        log.info("merged %s into %d layers", self, len(self.layers))
        return len(self.layers)

    def unmerge(self, model: torch.nn.Module) -> None:
        if self._merged_into is not model:
            raise ConfigError(f"{self} is not merged into this model")
        self._apply(model, -self.strength)
        self._merged_into = None

    @torch.no_grad()
    def _apply(self, model: torch.nn.Module, factor: float) -> None:
        """Add ``factor`` x each delta; all or nothing: a layer that would hold inf/NaN afterwards
        (a finite LoRA too large for the weights' dtype) undoes the layers before it and refuses."""
        modules = dict(model.named_modules())
        done: list[tuple[torch.Tensor, LoRALayer]] = []  # undone by subtraction: a copy of a 7B's weights costs GBs
        for name, layer in self.layers.items():
            weight = modules[name].weight
            if not weight.is_floating_point() or weight.element_size() < 2:
                raise ConfigError(f"{name}.weight is stored as {weight.dtype}; merge LoRAs before an FP8 precision strategy")
            merged = (weight.float() + factor * layer.delta(weight.shape, weight.device)).to(weight.dtype)
            if not bool(torch.isfinite(merged).all()) and bool(torch.isfinite(weight).all()):
                for earlier, applied in reversed(done):
                    earlier.copy_((earlier.float() - factor * applied.delta(earlier.shape, earlier.device)).to(earlier.dtype))
                raise InputError(
                    f"lora file {self.path}: merging layer {name!r} at strength {self.strength} overflows its "
                    f"{weight.dtype} weights (inf/NaN); lower the strength or use another LoRA"
                )
            weight.copy_(merged)
            done.append((weight, layer))
