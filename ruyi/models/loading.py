"""What loading a Ruyi-Mini-7B folder needs beyond ``from_pretrained``: a header check that fails
first and in one line, and random weights at a real shape.

Loading, casting, sharding and saving are the libraries' (diffusers ``ModelMixin`` for the
transformer and the VAE, transformers for CLIP). Before either reads a tensor, ``check_weights``
compares the safetensors headers (names, shapes, dtypes; no tensor data) with the model built on
the meta device, so a wrong folder, an incomplete download or a damaged file is reported with
the folder, the counts, the first keys and the fix: the original's users got "Load Model Failed"
with the real cause swallowed. Pickled weights (.bin, .pt) are never loaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import init_empty_weights
from safetensors import SafetensorError, safe_open

from ruyi.errors import CheckpointError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=torch.nn.Module)

WEIGHT_NAMES = ("diffusion_pytorch_model", "model")  # diffusers' and transformers' file stems
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SHOW = 3  # how many offending keys an error lists
_FIX = "check that the path is this model's folder, or re-download the checkpoint"


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


def load_model(cls: type[M], root: str | Path, *, dtype: torch.dtype | None = None) -> M:
    """Model class ``cls`` from ``root/<cls.subfolder>`` through its ``from_pretrained`` (which runs
    :func:`check_weights` first), in ``dtype`` (None: as stored), in eval mode without gradients."""
    folder = Path(root) / cls.subfolder
    if not folder.is_dir():
        raise CheckpointError(f"{folder} does not exist; {root} is not a complete Ruyi checkpoint ({_FIX})")
    with quiet_progress():
        model = cls.from_pretrained(folder, dtype=dtype)
    return model.eval().requires_grad_(False)


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Without the libraries' per-file progress bars: entry points log one line per model, and a
    user error after loading must stay the only line on stderr."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    libraries = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libraries:
            lib.enable_progress_bar()


def meta_model(cls: type[M], config: Mapping[str, Any], *, where: Path | None = None) -> M:
    """``cls.from_config(config)`` on the meta device: the expected tensors, at no memory cost.

    A config the class rejects is a CheckpointError naming ``where/config.json``.
    """
    try:
        with torch.device("meta"):
            return cls.from_config(dict(config))
    except (TypeError, ValueError, NotImplementedError) as err:
        source = where / "config.json" if where is not None else "the config"
        raise CheckpointError(f"{source} does not describe a valid {cls.__name__}: {err}") from None


# -- the header check --------------------------------------------------------------------------
def weight_files(folder: str | Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a model folder and, when sharded, the index's tensor -> shard map."""
    folder = Path(folder)
    for stem in WEIGHT_NAMES:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = _index_map(index)
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(
                    f"{index} lists {len(shards)} shards but {len(missing)} are missing from {folder} "
                    f"(e.g. {', '.join(missing[:_SHOW])}); the download is incomplete: re-download the checkpoint"
                )
            return [folder / s for s in shards], weight_map
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return [single], None
    pickles = (
        sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
    )
    found = (
        f"; found only {', '.join(pickles[:_SHOW])}: pickled weights are never loaded (loading them can run "
        "code), convert them to safetensors"
        if pickles
        else f"; {_FIX}"
    )
    names = " or ".join(f"{s}.safetensors[.index.json]" for s in WEIGHT_NAMES)
    raise CheckpointError(f"no weights in {folder}: expected {names}{found}")


def read_headers(folder: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, safetensors dtype)}`` over a folder's weight files, read from the headers only."""
    headers: dict[str, tuple[tuple[int, ...], str]] = {}
    files, weight_map = weight_files(folder)
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - a safe_open handle, not a dict
                    view = handle.get_slice(key)
                    headers[key] = (tuple(view.get_shape()), view.get_dtype())
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"cannot read {path} ({err}); the file is truncated or damaged: re-download it"
            ) from None
    if weight_map is not None and set(weight_map) != set(headers):
        absent = sorted(set(weight_map) - set(headers))
        raise CheckpointError(
            f"the shard index in {folder} lists {len(absent)} tensors its shards do not hold "
            f"(e.g. {', '.join(absent[:_SHOW])}) and the shards hold {len(set(headers) - set(weight_map))} "
            "it does not list; re-download the checkpoint"
        )
    return headers


def check_weights(
    folder: str | Path,
    expected: Mapping[str, torch.Tensor],
    *,
    ignore_unexpected: Collection[str] = (),
) -> None:
    """Compare a folder's safetensors headers with ``expected`` (a state dict, meta tensors are
    fine): missing, unexpected, reshaped and integer-instead-of-float tensors all fail in one line."""
    found = read_headers(folder)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - set(ignore_unexpected))
    shapes, dtypes = [], []
    for name in sorted(set(expected) & set(found)):
        shape, dtype = found[name]
        want = expected[name]
        if shape != tuple(want.shape):
            shapes.append(f"{name}: file {shape} vs model {tuple(want.shape)}")
        if want.is_floating_point() and not _is_float(dtype):
            dtypes.append(f"{name}: {dtype}")
    problems = [
        f"{len(items)} {what} (e.g. {'; '.join(items[:_SHOW])})"
        for what, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with another shape", shapes),
            ("stored as integers where the model has floats", dtypes),
        )
        if items
    ]
    if problems:
        raise CheckpointError(
            f"the weights in {folder} do not fit the model ({len(expected)} tensors expected, {len(found)} in "
            f"the files): {', '.join(problems)}; {_FIX}"
        )


def _index_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a valid shard index ({err!r}); re-download it") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{index} is not a valid shard index (weight_map is not a mapping); re-download it"
        )
    return weight_map


def _is_float(safetensors_dtype: str) -> bool:
    # F64/F32/F16/BF16 and the F8_* formats; I*/U*/BOOL are integers
    return safetensors_dtype.startswith("F") or safetensors_dtype == "BF16"


# -- random weights ----------------------------------------------------------------------------
def random_model(
    cls: type[M], config: Mapping[str, Any], *, dtype: torch.dtype, device: str | torch.device, seed: int = 0
) -> M:
    """``cls`` at ``config``'s shape (plus the class's ``config_overrides``) with N(0, 0.02) weights
    made directly on ``device`` in ``dtype``: real shapes, dtypes and kernels without a checkpoint."""
    overrides = getattr(cls, "config_overrides", None) or {}
    with init_empty_weights():  # parameters on meta, buffers real (some are in no checkpoint)
        model = cls.from_config({**config, **overrides})
    return randomize(model, dtype=dtype, device=device, seed=seed)


@torch.no_grad()
def randomize(module: M, *, dtype: torch.dtype, device: str | torch.device, seed: int = 0) -> M:
    """Replace every parameter of ``module`` (meta or not) by N(0, 0.02) values created on ``device``
    in ``dtype`` (integers: zeros); buffers are moved and cast. Eval mode, no gradients."""
    device = torch.device(device)
    generator = torch.Generator(device).manual_seed(seed)
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None:
                continue
            floating = param.is_floating_point()
            tensor = torch.empty(param.shape, dtype=dtype if floating else param.dtype, device=device)
            if floating:
                tensor.normal_(0.0, 0.02, generator=generator)
            else:
                tensor.zero_()
            sub._parameters[name] = torch.nn.Parameter(tensor, requires_grad=False)
        # buffers one by one: ModelMixin.to(dtype) warns about fp32 modules even when it has none
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                sub._buffers[name] = buffer.to(device, dtype if buffer.is_floating_point() else buffer.dtype)
    return module.eval()
