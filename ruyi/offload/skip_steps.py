"""The original's "GPU offload steps": U-ViT long-skip activations parked in CPU RAM.

The transformer's first half pushes its block outputs onto a skip store and the second half pops
them in reverse; in between they only occupy accelerator memory (for the 7B model at 120 frames
and 512 px, ~19 activations of ~0.35 GB each). :class:`CPUSkipStack` moves them to CPU memory in
groups of ``group_size`` as they are pushed and brings a group back when the second half reaches
it. On CUDA the copies use pinned memory and a side stream, and the next group is fetched while
the current one is consumed, so transfers overlap the blocks' compute. The output is unchanged.

``apply_skip_offload(transformer, group_size)`` installs it through the transformer's
``skip_stack_factory`` hook; ``remove_skip_offload`` restores the in-memory default.
"""

from __future__ import annotations

import torch

from ruyi.errors import ConfigError
from ruyi.extension import Extension


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
        incoming = len(self._incoming[0]) if self._incoming is not None else 0
        return len(self._resident) + incoming + sum(len(group) for group in self._parked)

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


def apply_skip_offload(transformer: torch.nn.Module, group_size: int) -> None:
    """Park the long skips of ``transformer`` in CPU RAM in groups of ``group_size`` (0 = off)."""
    if group_size < 0:
        raise ConfigError(f"skip_steps={group_size} must be >= 0 (0 = off)")
    if group_size == 0:
        remove_skip_offload(transformer)
        return
    transformer.skip_stack_factory = lambda: CPUSkipStack(group_size)


def remove_skip_offload(transformer: torch.nn.Module) -> None:
    """Back to the transformer's in-memory default store."""
    from ruyi.models.transformer import SkipStack

    transformer.skip_stack_factory = SkipStack


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
