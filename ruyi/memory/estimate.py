"""Live-tensor accounting without a GPU: what a forward would hold, at the real shape, on ``meta``.

:class:`LiveTensors` is a dispatch mode that adds up the bytes of every storage an op creates
and subtracts them when the last tensor using that storage is gone, keeping the peak and the
tensors alive at that moment with the Python line that made each. Run on the ``meta`` device, a
7B block at 768 x 768 x 120 frames costs no memory and a fraction of a second, so CPU tests and
``benchmarks/memory_profile.py --simulate`` can show where a peak comes from and that an option
lowers it. It models ``torch.cuda.max_memory_allocated`` of the activations only: weights,
allocator rounding, cuBLAS workspaces and fragmentation are not in it (a GPU profile is the
measurement; this is the preview).

Fused attention is modelled as the kernels on a GPU behave (output + log-sum-exp, no score
matrix): on ``meta`` torch would otherwise pick its math path.
"""

from __future__ import annotations

import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_HERE = __file__


@dataclass
class Allocation:
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    op: str
    site: str  # "file:line function" of the innermost frame outside torch and this module
    refs: int = 0


@dataclass
class PeakReport:
    """The peak of the watched region: bytes, and the allocations alive at that moment (largest first)."""

    peak_bytes: int
    live_at_peak: list[Allocation] = field(default_factory=list)
    where: str = ""  # the site of the allocation that set the peak

    def by_site(self) -> list[tuple[str, int, int]]:
        """(site, bytes, count) of the allocations alive at the peak, grouped by site, largest first."""
        sites: dict[str, list[int]] = {}
        for a in self.live_at_peak:
            entry = sites.setdefault(a.site, [0, 0])
            entry[0] += a.nbytes
            entry[1] += 1
        return sorted(((s, b, n) for s, (b, n) in sites.items()), key=lambda r: -r[1])


class LiveTensors(TorchDispatchMode):
    """Counts the bytes of storages created inside the mode (not of weights or inputs made before)."""

    def __init__(self, *, sites: bool = True) -> None:
        super().__init__()
        self.sites = sites
        self.live_bytes = 0
        self.peak = PeakReport(0)
        self._allocs: dict[int, Allocation] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, func, inputs)
        return out

    def _track(self, tensor: torch.Tensor, func, inputs: set[int]) -> None:
        key = _storage_key(tensor)
        alloc = self._allocs.get(key)
        if alloc is None:
            if key in inputs:
                return  # a view (or in-place result) of a tensor made outside the mode
            nbytes = tensor.untyped_storage().nbytes()
            alloc = Allocation(
                nbytes, tuple(tensor.shape), tensor.dtype, str(func), _site() if self.sites else ""
            )
            self._allocs[key] = alloc
            self.live_bytes += nbytes
            if self.live_bytes > self.peak.peak_bytes:
                live = sorted(self._allocs.values(), key=lambda a: -a.nbytes)
                self.peak = PeakReport(self.live_bytes, [_copy(a) for a in live], alloc.site)
        alloc.refs += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        alloc = self._allocs.get(key)
        if alloc is None:
            return
        alloc.refs -= 1
        if alloc.refs == 0:
            del self._allocs[key]
            self.live_bytes -= alloc.nbytes


class FusedAttention(TorchFunctionMode):
    """Replaces ``scaled_dot_product_attention`` by an output of the right shape plus the float32
    log-sum-exp a flash / memory-efficient kernel keeps: what those kernels allocate on a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query, _key, value = args[:3]
            out = query.new_empty((*query.shape[:-1], value.shape[-1]))
            out.lse = query.new_empty(query.shape[:-1], dtype=torch.float32)  # freed with the output
            return out
        return func(*args, **kwargs)


@contextmanager
def live_tensors(*, sites: bool = True) -> Iterator[LiveTensors]:
    """``with live_tensors() as live: model(...)`` then ``live.peak``; attention modelled as fused."""
    mode = LiveTensors(sites=sites)
    with FusedAttention(), mode:
        yield mode


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def _copy(alloc: Allocation) -> Allocation:
    return Allocation(alloc.nbytes, alloc.shape, alloc.dtype, alloc.op, alloc.site, alloc.refs)


def _site() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        name = frame.filename
        if name == _HERE or "/torch/" in name:
            continue
        short = "/".join(name.split("/")[-2:])
        return f"{short}:{frame.lineno} {frame.name}"
    return "?"


class ParkedSkips:
    """A skip store that models ``skip_steps=1`` parking: pushed activations leave the device, and
    popping brings one back with the next one already on its way (as ``CPUSkipStack`` does)."""

    def __init__(self) -> None:
        self._parked: list[tuple[torch.Size, torch.dtype, torch.device]] = []
        self._incoming: torch.Tensor | None = None

    def push(self, tensor: torch.Tensor) -> None:
        self._parked.append((tensor.shape, tensor.dtype, tensor.device))

    def pop(self) -> torch.Tensor:
        current = self._incoming if self._incoming is not None else self._bring()
        self._incoming = self._bring() if self._parked else None
        return current

    def _bring(self) -> torch.Tensor:
        shape, dtype, device = self._parked.pop()
        return torch.empty(shape, dtype=dtype, device=device)


def transformer_inputs(
    arch: dict, *, batch: int, frames: int, height: int, width: int, dtype: torch.dtype
) -> tuple[tuple, dict]:
    """Meta-device ``(args, kwargs)`` of one transformer call (``arch``: the preset's
    ``transformer_arch``) for a video of ``frames`` x ``height`` x ``width`` pixels."""
    from ruyi.models.transformer import RuyiTransformer3D
    from ruyi.models.transformer.inputs import LatentGrid, dummy_inputs, full_config

    config = full_config(RuyiTransformer3D, arch)
    grid = LatentGrid.of_video(frames, height, width, patch_size=config["patch_size"])
    return dummy_inputs(config, grid, batch=batch, dtype=dtype, device="meta").as_call()
