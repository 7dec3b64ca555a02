"""Turn a checkpoint folder (the Hugging Face layout of ``IamCreateAI/Ruyi-Mini-7B``) into modules.

Only safetensors are read (single file or sharded with an ``.index.json``). Every failure names
the exact folder, file or keys involved: the original's users got "Load Model Failed" with the
real cause swallowed.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ruyi.errors import CheckpointError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=torch.nn.Module)

WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
_SHOW = 5  # how many offending keys an error lists


def read_config(folder: str | Path, name: str = "config.json") -> dict[str, Any]:
    """Read ``folder/name`` as JSON, failing with the path and the fix."""
    path = Path(folder) / name
    if not Path(folder).is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist; check the model path")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the folder must hold the checkpoint's {name}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); re-download it") from None


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a component folder: one file, or the shards an index lists."""
    folder = Path(folder)
    for stem in WEIGHT_NAMES:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index} is not a valid shard index ({err})") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(
                    f"{index} lists {len(missing)} shard(s) missing from {folder}: "
                    f"{', '.join(missing[:_SHOW])}; re-download the checkpoint"
                )
            return [folder / s for s in shards]
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return [single]
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
    hint = (
        f" (found {', '.join(pickles)}: pickled weights are not loaded for safety; convert them to safetensors)"
        if pickles
        else ""
    )
    names = " or ".join(f"{s}.safetensors[.index.json]" for s in WEIGHT_NAMES)
    raise CheckpointError(f"no weights in {folder}: expected {names}{hint}")


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a component folder, merged over shards, on the CPU."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"cannot read {path}: {err}; the file is damaged or incomplete") from None
    return state


def constructor_kwargs(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``config`` that ``cls.__init__`` accepts by name (others are logged and dropped)."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in config.items() if k in params and k != "self"}
    ignored = sorted(k for k in config if k not in params and not k.startswith("_"))
    if ignored:
        log.debug("%s ignores config fields %s", cls.__name__, ignored)
    return kwargs


def check_keys(expected: set[str], found: set[str], where: str) -> None:
    """Fail with the first few missing and unexpected keys (and their counts)."""
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:_SHOW])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:_SHOW])})")
    raise CheckpointError(
        f"weights in {where} do not fit the model: {'; '.join(parts)}; "
        "is this the right folder / model class, or is the checkpoint incomplete?"
    )


def check_tensors(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], folder: str | Path) -> None:
    """Every checkpoint tensor has the model's shape, and floating weights are stored as floats."""
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if shapes:
        raise CheckpointError(
            f"{len(shapes)} tensor shape(s) in {folder} differ from its config.json "
            f"(e.g. {'; '.join(shapes[:_SHOW])})"
        )
    integers = [f"{k}: {state[k].dtype}" for k, v in expected.items() if k in state and v.is_floating_point()
                and not state[k].is_floating_point()]  # fmt: skip
    if integers:
        raise CheckpointError(
            f"{len(integers)} weight tensor(s) in {folder} are not floating point (e.g. {'; '.join(integers[:_SHOW])}); "
            "the checkpoint is damaged or not a Ruyi model"
        )


def build_empty(cls: type[M], config: Mapping[str, Any]) -> M:
    """Construct ``cls`` from a config dict on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return cls(**constructor_kwargs(cls, config))


def load_component(
    cls: type[M],
    folder: str | Path,
    *,
    config_overrides: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> M:
    """Build ``cls`` from ``folder/config.json`` (plus overrides) and load its safetensors strictly.

    Modules named in ``cls._keep_in_fp32_modules`` stay in float32 when ``dtype`` is lower.
    """
    folder = Path(folder)
    config = {**read_config(folder), **(config_overrides or {})}
    try:
        model = build_empty(cls, config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / 'config.json'} does not describe a valid {cls.__name__}: {err}") from None
    state = load_state_dict(folder)
    check_keys(set(model.state_dict()), set(state), str(folder))
    check_tensors(model.state_dict(), state, folder)
    model.load_state_dict(state, strict=True, assign=True)
    _check_no_meta_buffers(model)
    cast_model(model, dtype)
    model.eval().requires_grad_(False)
    return model.to(device)


def cast_model(model: torch.nn.Module, dtype: torch.dtype | None) -> None:
    """Cast floating weights to ``dtype``, keeping the model's fp32-declared modules in float32."""
    if dtype is None:
        return
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if keep and any(part in keep for part in name.split(".")):
            continue
        for tensors in (module._parameters, module._buffers):
            for key, t in tensors.items():
                if t is None or not t.is_floating_point() or t.dtype == dtype:
                    continue
                cast = t.to(dtype)
                if isinstance(t, torch.nn.Parameter):
                    cast = torch.nn.Parameter(cast, requires_grad=t.requires_grad)
                tensors[key] = cast


def _check_no_meta_buffers(model: torch.nn.Module) -> None:
    """Non-persistent buffers are not in the checkpoint: a model must not need them after a meta build."""
    leftover = [n for n, b in model.named_buffers() if b.is_meta]
    if leftover:
        raise CheckpointError(f"buffers {leftover[:_SHOW]} were not restored after loading; this is a bug in ruyi")


def load_model(cls: type[M], root: str | Path, *, dtype: torch.dtype | None = None) -> M:
    """Load model class ``cls`` from ``root/<cls.subfolder>`` (a class may bring its own ``from_pretrained``)."""
    folder = Path(root) / cls.subfolder
    custom = getattr(cls, "from_pretrained", None)
    if custom is not None:
        return custom(folder, dtype=dtype)
    return load_component(cls, folder, config_overrides=getattr(cls, "config_overrides", None), dtype=dtype)
