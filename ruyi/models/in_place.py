"""Loading a model straight into where its weights will live, one tensor at a time.

``from_pretrained`` reads the checkpoint into host memory and hands the tensors to the model; a
placement that streams the weights from host memory (``offload=group``) then makes its own copy in
page-locked memory, so a 13.4 GiB transformer needs twice that while loading. Here the model is
built on the meta device and each tensor is read from the safetensors file into its final storage:

- in memory (``WeightsHome(pin=...)``): page-locked when the placement copies from pinned memory
  (diffusers' group hooks take a pinned tensor as it is: no second copy), plain otherwise;
- on disk (``WeightsHome(group_files=...)``): each group of weights the placement streams is written
  to its file straight from the checkpoint, one group in memory at a time; the model keeps empty
  placeholders (never touched, so never resident) that the placement's hooks fill from the files;
- ``stored_as``: tensors that a precision mode stores in another dtype (FP8) are cast as read, so
  they never exist in the pipeline's dtype first.

The values are those ``from_pretrained`` gives (checked by the tests against it on the tiny
checkpoints): floating tensors cast to ``dtype``, then to their storage dtype. The files are read with
plain reads into the destination (the safetensors header gives each tensor's byte range): a memory
map would count every page it touched as the process's resident memory until it is closed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import init_empty_weights

from ruyi.errors import CheckpointError
from ruyi.models.loading import check_weights, read_config, weight_files

M = TypeVar("M", bound=torch.nn.Module)

# safetensors' dtype names (the format's documented table)
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class GroupFile:
    """One file a placement streams a group of weights from: ``entries`` are (key in the file, the
    tensor's name in the model's ``state_dict`` / ``named_buffers``), in the placement's order."""

    path: Path
    entries: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class WeightsHome:
    """Where a model's weights go as they are read (see the module docstring)."""

    pin: bool = False
    # the model (on meta) -> its group files, or None when the placement cannot name them
    group_files: Callable[[torch.nn.Module], Sequence[GroupFile] | None] | None = None
    # the model (on meta) -> {parameter name: storage dtype} for the tensors kept in another dtype
    stored_as: Callable[[torch.nn.Module], Mapping[str, torch.dtype]] | None = None
    # called when loading fails after group files were written: the placement removes its folder
    discard: Callable[[], None] | None = None


@dataclass(frozen=True)
class _Entry:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def read_layout(folder: str | Path) -> dict[str, _Entry]:
    """``{name: where its bytes are}`` over a model folder's safetensors files, from the headers."""
    layout = {}
    files, _ = weight_files(folder)
    for path in files:
        with open(path, "rb") as handle:
            try:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(size))
            except (struct.error, ValueError) as err:
                raise CheckpointError(f"cannot read {path} ({err}); the file is truncated or damaged: re-download it") from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise CheckpointError(f"{path}: {name} has dtype {info['dtype']}, which ruyi does not read")
            begin, end = info["data_offsets"]
            layout[name] = _Entry(path, SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), 8 + size + begin, 8 + size + end)
    return layout


class _Reader:
    """Reads tensors by name, each straight into a given tensor of its dtype when there is one."""

    def __init__(self, layout: Mapping[str, _Entry]) -> None:
        self.layout = layout
        self._handles: dict[Path, Any] = {}

    def read(self, name: str, into: torch.Tensor | None = None) -> torch.Tensor:
        entry = self.layout[name]
        out = into if into is not None else torch.empty(entry.shape, dtype=entry.dtype)
        handle = self._handles.get(entry.path) or self._handles.setdefault(entry.path, open(entry.path, "rb"))  # noqa: SIM115
        handle.seek(entry.begin)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(b"")
        if handle.readinto(view) != entry.end - entry.begin:
            raise CheckpointError(f"{entry.path} ends inside {name}; the file is truncated: re-download it")
        return out

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def load_in_place(cls: type[M], root: str | Path, *, dtype: torch.dtype | None, home: WeightsHome) -> M:
    """``cls`` from ``root/<cls.subfolder>`` as ``load_model`` gives it (same values, dtypes, config,
    eval mode, no gradients), its weights put where ``home`` says as they are read."""
    folder = Path(root) / cls.subfolder
    if not folder.is_dir():
        raise CheckpointError(f"{folder} does not exist; {root} is not a complete Ruyi checkpoint")
    model = _skeleton(cls, folder, dtype)
    layout = read_layout(folder)
    stored_as = dict(home.stored_as(model)) if home.stored_as is not None else {}
    targets = {name: _target_dtype(layout[name].dtype, tensor, dtype, stored_as.get(name))
               for name, tensor in model.state_dict(keep_vars=True).items()}  # fmt: skip
    reader = _Reader(layout)
    try:
        groups = home.group_files(model) if home.group_files is not None else None
        if groups is not None:
            try:
                _write_groups(model, groups, reader, targets, dtype)
            except BaseException:
                if home.discard is not None:
                    home.discard()  # no half-written folder of weights is left behind
                raise
        else:
            for name, target in targets.items():
                _place(model, name, _final(reader, name, target, dtype, pin=home.pin))
    finally:
        reader.close()
    model.register_to_config(_name_or_path=folder)
    return model.eval().requires_grad_(False)


def _skeleton(cls: type[M], folder: Path, dtype: torch.dtype | None) -> M:
    """The model on the meta device (buffers real), configured as ``from_pretrained`` configures it,
    after the same checks of config and headers."""
    from ruyi.models.config_checks import check_model_config
    from ruyi.models.loading import meta_model

    overrides = dict(getattr(cls, "config_overrides", None) or {})
    init_keys = cls._get_init_keys(cls)
    config = {**read_config(folder), **{k: v for k, v in overrides.items() if k in init_keys}}
    check_model_config(cls, config, folder)
    check_weights(folder, meta_model(cls, config, where=folder).state_dict())
    loaded, unused = cls.load_config(folder, return_unused_kwargs=True, **overrides)
    with _default_dtype(dtype), init_empty_weights():  # buffers made in __init__ take the load dtype, as there
        return cls.from_config(loaded, **unused)


@contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    before = torch.get_default_dtype()
    if dtype is not None and dtype.is_floating_point:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _target_dtype(stored: torch.dtype, tensor: torch.Tensor, dtype: torch.dtype | None, storage: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor ends in: ``dtype`` for floating ones (as stored when None: the model's),
    then its storage dtype."""
    if storage is not None:
        return storage
    if not stored.is_floating_point:
        return stored
    return dtype if dtype is not None else tensor.dtype


def _final(reader: _Reader, name: str, target: torch.dtype, dtype: torch.dtype | None, *, pin: bool) -> torch.Tensor:
    """The tensor ``name`` in its final dtype, in pinned memory when ``pin``."""
    entry = reader.layout[name]
    if entry.dtype == target:
        return reader.read(name, torch.empty(entry.shape, dtype=target, pin_memory=pin))
    value = reader.read(name)
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)  # the pipeline's dtype first, as from_pretrained does; then the storage dtype
    value = value.to(target)
    if not pin:
        return value
    return torch.empty(value.shape, dtype=target, pin_memory=True).copy_(value)


def _place(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def _write_groups(model: torch.nn.Module, groups: Sequence[GroupFile], reader: _Reader,
                  targets: Mapping[str, torch.dtype], dtype: torch.dtype | None) -> None:  # fmt: skip
    """Every group's file from the checkpoint (buffers that no checkpoint holds from the model),
    then empty placeholders in the model: what the placement's hooks replace from the files."""
    from safetensors.torch import save_file

    buffers = dict(model.named_buffers())
    covered = {name for group in groups for _, name in group.entries}
    missing = sorted(set(targets) - covered)
    if missing:
        raise RuntimeError(f"the placement's group files leave out {len(missing)} tensors (e.g. {missing[:3]})")
    for group in groups:
        tensors = {}
        for key, name in group.entries:
            if name in targets:
                tensors[key] = _final(reader, name, targets[name], dtype, pin=False)
                if name in buffers:  # a buffer the checkpoint holds: small, kept as loaded
                    _place(model, name, tensors[key])
            else:
                tensors[key] = buffers[name].detach().cpu()
        group.path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(group.path))
        del tensors
    for name, target in targets.items():
        if name not in buffers:  # a parameter: never written to, so its pages are never resident
            _place(model, name, torch.empty(reader.layout[name].shape, dtype=target))
