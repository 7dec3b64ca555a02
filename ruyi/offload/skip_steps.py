"""The original's "GPU offload steps": U-ViT long-skip activations parked in CPU RAM.

The first half of the transformer's blocks pushes its outputs, the second half pops them in
reverse; in between they only occupy memory. ``CPUSkipStack`` moves every ``group_size`` pushed
activations to (pinned) CPU memory and brings a group back when the first of it is popped. On
CUDA the copies run on a side stream, so they overlap the blocks' compute instead of stalling it.
"""

from __future__ import annotations

import torch


class CPUSkipStack:
    """A LIFO of activations (B, L, D) that keeps at most ``group_size`` of them on the GPU."""

    def __init__(self, group_size: int) -> None:
        if group_size < 1:
            raise ValueError(f"group_size={group_size} must be >= 1")
        self.group_size = group_size
        self._resident: list[torch.Tensor] = []  # on the compute device, newest last
        self._parked: list[tuple[list[torch.Tensor], torch.device]] = []  # CPU groups + their home, newest last
        self._stream: torch.cuda.Stream | None = None

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream | None:
        if device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def push(self, tensor: torch.Tensor) -> None:
        self._resident.append(tensor)
        if len(self._resident) >= self.group_size:
            self._parked.append((self._to_cpu(self._resident), self._resident[0].device))
            self._resident = []

    def _to_cpu(self, group: list[torch.Tensor]) -> list[torch.Tensor]:
        stream = self._side_stream(group[0].device)
        if stream is None:
            return [t.to("cpu") for t in group]
        stream.wait_stream(torch.cuda.current_stream(group[0].device))
        with torch.cuda.stream(stream):
            parked = []
            for t in group:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                t.record_stream(stream)  # the GPU copy is freed only after the transfer ran
                parked.append(host)
        return parked

    def _to_device(self, group: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        stream = self._side_stream(device)
        if stream is None:
            return [t.to(device) for t in group]
        stream.synchronize()  # the pinned copies must be complete before reading them back
        with torch.cuda.stream(stream):
            back = [t.to(device, non_blocking=True) for t in group]
        torch.cuda.current_stream(device).wait_stream(stream)
        for t in back:
            t.record_stream(torch.cuda.current_stream(device))
        return back

    def pop(self) -> torch.Tensor:
        if not self._resident:
            if not self._parked:
                raise IndexError("pop from an empty skip stack")
            self._resident = self._to_device(*self._parked.pop())
        return self._resident.pop()

    def __len__(self) -> int:
        return len(self._resident) + sum(len(g) for g in self._parked)


def apply_skip_offload(transformer: torch.nn.Module, group_size: int) -> None:
    """Park the long skips of ``transformer`` in CPU RAM in groups of ``group_size`` (0 = off)."""
    if group_size <= 0:
        remove_skip_offload(transformer)
        return
    transformer.skip_stack_factory = lambda: CPUSkipStack(group_size)


def remove_skip_offload(transformer: torch.nn.Module) -> None:
    """Back to the in-memory default stack."""
    from ruyi.models.transformer import SkipStack

    transformer.skip_stack_factory = SkipStack
