"""The original's "GPU offload steps": U-ViT long-skip activations parked in CPU RAM.

The transformer's first half stores its block outputs for the second half, which takes them back
in reverse; in between they only occupy accelerator memory (for the 7B model at 120 frames and
512 px, ~19 activations of ~0.35 GB each). Every stored output passes the transformer's
``skip_push`` identity and comes back through ``skip_pop``. :func:`park_long_skips` registers
diffusers hooks there: ``skip_push`` hands the activation to a store and returns a
:class:`ParkedSkip` placeholder in its place, ``skip_pop`` turns the placeholder back into the
activation; a hook on the transformer's forward starts each call with a fresh store.

:class:`CPUSkipStack`, the store of ``skip_steps=N``, moves activations to CPU memory in groups of
``group_size`` as they are pushed and brings a group back when the second half reaches it. On CUDA
the copies use pinned memory and a side stream, and the next group is fetched while the current
one is consumed, so transfers overlap the blocks' compute. The output is unchanged.

``apply_skip_offload(transformer, group_size)`` parks with it; ``remove_skip_offload`` takes the
hooks off, and the skips stay on the device again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ruyi.errors import ConfigError
from ruyi.extension import Extension

HOOK = "ruyi.long_skip_parking"


class SkipStore(Protocol):
    """Where the first half's block outputs wait for the second half (last in, first out)."""

    def push(self, tensor: torch.Tensor) -> None: ...

    def pop(self) -> torch.Tensor: ...


class CPUSkipStack:
    """A LIFO of activations that keeps at most ``group_size`` pushed ones on the compute device.

    ``device``: the compute device, where popped activations are returned (default: the device of
    the first push). While popping, at most two groups are resident: the current one and the next,
    already on its way.
    """

    def __init__(self, group_size: int, device: torch.device | str | None = None) -> None:
        if group_size < 1:
            raise ConfigError(f"group_size={group_size} must be >= 1")
        self.group_size = group_size
        self.device = None if device is None else torch.device(device)
        self._resident: list[torch.Tensor] = []  # on the compute device, newest last
        self._parked: list[list[torch.Tensor]] = []  # groups in CPU memory, newest last
        # the group on its way back, with the event that marks its arrival
        self._incoming: tuple[list[torch.Tensor], torch.cuda.Event | None] | None = None
        self._stream: torch.cuda.Stream | None = None

    def push(self, tensor: torch.Tensor) -> None:
        if self.device is None:
            self.device = tensor.device
        self._resident.append(tensor)
        if len(self._resident) == self.group_size:
            self._parked.append(self._to_cpu(self._resident))
            self._resident = []

    def pop(self) -> torch.Tensor:
        if not self._resident:
            if self._incoming is None:
                if not self._parked:
                    raise IndexError("pop from an empty skip stack")
                self._incoming = self._fetch(self._parked.pop())
            self._resident = self._wait(*self._incoming)
            # prefetch: the next group crosses the bus while this one is consumed
            self._incoming = self._fetch(self._parked.pop()) if self._parked else None
        return self._resident.pop()

    def __len__(self) -> int:
        return self.on_device + sum(len(group) for group in self._parked)

    @property
    def on_device(self) -> int:
        """Activations held on the compute device now: the current group and the one on its way."""
        incoming = len(self._incoming[0]) if self._incoming is not None else 0
        return len(self._resident) + incoming

    # -- transfers ---------------------------------------------------------------------------------
    def _side_stream(self) -> torch.cuda.Stream | None:
        if self.device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    def _to_cpu(self, group: list[torch.Tensor]) -> list[torch.Tensor]:
        stream = self._side_stream()
        if stream is None:
            return [t.to("cpu") for t in group]
        stream.wait_stream(torch.cuda.current_stream(self.device))  # the activations must be computed first
        parked = []
        with torch.cuda.stream(stream):
            for t in group:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                t.record_stream(stream)  # its memory is reused only after the copy has run
                parked.append(host)
        return parked

    def _fetch(self, group: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
        """Start copying a parked group back; the event marks its completion on the side stream."""
        stream = self._side_stream()
        if stream is None:
            return [t.to(self.device) for t in group], None
        # same stream as the copies to the host: ordered after them without a CPU-side wait
        with torch.cuda.stream(stream):
            back = [t.to(self.device, non_blocking=True) for t in group]
            done = torch.cuda.Event()
            done.record(stream)
        return back, done

    def _wait(self, group: list[torch.Tensor], done: torch.cuda.Event | None) -> list[torch.Tensor]:
        if done is None:
            return group
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for t in group:
            t.record_stream(current)  # allocated on the side stream, used and freed on this one
        return group


class ParkedSkip:
    """What travels from ``skip_push`` to ``skip_pop`` in place of a parked activation."""

    __slots__ = ("shape", "dtype")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.shape, self.dtype = tensor.shape, tensor.dtype

    def __repr__(self) -> str:
        return f"ParkedSkip({tuple(self.shape)}, {self.dtype})"


class SkipParking:
    """The long skips of one transformer in a store that each forward makes afresh (``make_store``):
    an earlier call that failed half-way leaves nothing behind in the next one's."""

    def __init__(self, make_store: Callable[[], SkipStore]) -> None:
        self.make_store = make_store
        self.store: SkipStore | None = None

    def begin(self) -> None:
        self.store = self.make_store()

    def park(self, tensor: torch.Tensor) -> ParkedSkip:
        if self.store is None:  # run_blocks called outside forward
            self.begin()
        self.store.push(tensor)
        return ParkedSkip(tensor)

    def fetch(self, placeholder: Any) -> torch.Tensor:
        if not isinstance(placeholder, ParkedSkip):
            raise TypeError(f"skip_pop got {type(placeholder).__name__}, not a skip that skip_push parked")
        tensor = self.store.pop()
        if tensor.shape != placeholder.shape or tensor.dtype != placeholder.dtype:
            raise RuntimeError(
                f"the skip store gave {tuple(tensor.shape)} {tensor.dtype} back for {placeholder}"
            )
        return tensor


class FreshStore(ModelHook):
    def __init__(self, parking: SkipParking) -> None:
        super().__init__()
        self.parking = parking

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self.parking.begin()
        return args, kwargs


class ParkOnPush(ModelHook):
    def __init__(self, parking: SkipParking) -> None:
        super().__init__()
        self.parking = parking

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> ParkedSkip:
        return self.parking.park(output)


class FetchOnPop(ModelHook):
    def __init__(self, parking: SkipParking) -> None:
        super().__init__()
        self.parking = parking

    def pre_forward(self, module: torch.nn.Module, placeholder: Any) -> tuple[tuple, dict]:
        return (self.parking.fetch(placeholder),), {}


def _hooked_modules(transformer: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    if not all(isinstance(getattr(transformer, n, None), torch.nn.Module) for n in ("skip_push", "skip_pop")):
        raise TypeError(
            f"{type(transformer).__name__} has no skip_push/skip_pop modules to park long skips at"
        )
    return transformer.skip_push, transformer.skip_pop


def park_long_skips(transformer: torch.nn.Module, make_store: Callable[[], SkipStore]) -> SkipParking:
    """Keep the long skips of ``transformer`` in ``make_store()`` (a new one per forward)."""
    push, pop = _hooked_modules(transformer)
    parking = SkipParking(make_store)
    hooks = {transformer: FreshStore(parking), push: ParkOnPush(parking), pop: FetchOnPop(parking)}
    for module, hook in hooks.items():
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK)
    return parking


def apply_skip_offload(transformer: torch.nn.Module, group_size: int) -> None:
    """Park the long skips of ``transformer`` in CPU RAM in groups of ``group_size`` (0 = off)."""
    if group_size < 0:
        raise ConfigError(f"skip_steps={group_size} must be >= 0 (0 = off)")
    remove_skip_offload(transformer)
    if group_size:
        park_long_skips(transformer, lambda: CPUSkipStack(group_size))


def remove_skip_offload(transformer: torch.nn.Module) -> None:
    """Take the parking hooks off (if any): the long skips stay on the device again."""
    for module in (transformer, *_hooked_modules(transformer)):
        registry = getattr(module, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry):
            registry.remove_hook(HOOK, recurse=False)


class LongSkipParking(Extension):
    """The ``skip_steps=N`` option as an extension: long skips parked in CPU RAM in groups of N."""

    stage = "skip"

    def __init__(self, group_size: int) -> None:
        if group_size < 1:
            raise ConfigError(f"skip_steps={group_size} must be >= 1 to park long skips (0 = off)")
        self.group_size = group_size

    def apply(self, pipe) -> None:
        apply_skip_offload(pipe.transformer, self.group_size)

    def remove(self, pipe) -> None:
        remove_skip_offload(pipe.transformer)
