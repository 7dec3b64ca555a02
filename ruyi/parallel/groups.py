"""Processes, process groups and the device mesh of a multi-process run (``torchrun``).

One process per GPU (or per CPU worker with gloo). The mesh has three named dimensions, outermost
first: ``cfg`` (halves of the guidance batch), ``ring`` and ``ulysses`` (slices of the tokens);
diffusers' context-parallel attention looks the last two up by name. Ulysses is innermost so its
all-to-alls, the heaviest traffic, stay between neighbouring ranks (the same NVLink island).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

log = logging.getLogger(__name__)

MESH_DIMS = ("cfg", "ring", "ulysses")


def world_size() -> int:
    """Processes in this run: the initialised process group's size, else torchrun's WORLD_SIZE, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    _adopt_submitit_ranks()
    return launched_world_size()


def launched_world_size() -> int:
    """The processes the launcher started (torchrun's ``WORLD_SIZE``; 1 without one), read from the
    environment only: validation needs no joined group and changes nothing. A submitit job's ranks
    are exported by :func:`init_distributed`, which the entry point calls first."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    _adopt_submitit_ranks()
    return int(os.environ.get("RANK", "0"))


def _adopt_submitit_ranks() -> None:
    """A job of Hydra's submitit launcher with several tasks (``hydra.launcher.tasks_per_node=N``,
    on Slurm or local) learns its ranks from Slurm/submitit variables; torch.distributed reads
    torchrun's, which submitit derives (master = the job's first host)."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        # every task sees all of its node's GPUs and takes GPU LOCAL_RANK (init_distributed)
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def is_main_process() -> bool:
    """True on the one process that writes outputs and logs progress (rank 0, or a plain run)."""
    return rank() == 0


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group torchrun (or Slurm via submitit) described; returns this rank's device.

    Called once, by the entry point (``ruyi.cli`` for scripts/infer.py; a Python caller under
    torchrun calls it before building a pipeline): validation and the ``parallel`` strategy only
    read the group. A single-process run is left alone. Under CUDA each rank takes GPU ``LOCAL_RANK`` (before any
    weight loads, so "cuda" means that GPU everywhere later); the default backend pairs NCCL for
    CUDA tensors with gloo for CPU ones.
    """
    if world_size() == 1:
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group(backend=None if device.type == "cuda" else "gloo")
        log.info("rank %d of %d joined the process group on %s", dist.get_rank(), dist.get_world_size(), device)
    return device


def quiet_other_ranks() -> None:
    """Rank 0 alone logs progress and writes log files: the others keep warnings on the console."""
    if is_main_process():
        return
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):  # e.g. Hydra's job log: one writer per run
            root.removeHandler(handler)
            handler.close()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (create or download a checkpoint); the others wait, then run it
    and find the files in place instead of writing them a second time."""
    joined = dist.is_available() and dist.is_initialized()
    if joined and not is_main_process():
        dist.barrier()
    try:
        yield
    finally:  # also when rank 0 fails: the others then meet the same error themselves
        if joined and is_main_process():
            dist.barrier()


def shutdown() -> None:
    """Leave the process group (every rank, at the end of a run) so torchrun exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Degrees:
    """How many ranks split each axis; their product is the world size."""

    cfg: int = 1
    ring: int = 1
    ulysses: int = 1

    @property
    def sequence(self) -> int:
        """Ranks that share one batch half, each holding a slice of the tokens."""
        return self.ring * self.ulysses

    @property
    def total(self) -> int:
        return self.cfg * self.sequence

    def __str__(self) -> str:
        return f"cfg={self.cfg} x ring={self.ring} x ulysses={self.ulysses}"


@dataclass(frozen=True)
class ParallelGroups:
    """The mesh of one run and the groups each feature communicates over."""

    degrees: Degrees
    mesh: DeviceMesh

    @classmethod
    def build(cls, degrees: Degrees, device_type: str) -> ParallelGroups:
        mesh = init_device_mesh(device_type, (degrees.cfg, degrees.ring, degrees.ulysses), mesh_dim_names=MESH_DIMS)
        return cls(degrees=degrees, mesh=mesh)

    @cached_property
    def cfg_group(self) -> dist.ProcessGroup:
        return self.mesh["cfg"].get_group()

    @property
    def cfg_rank(self) -> int:
        return self.mesh["cfg"].get_local_rank()

    @cached_property
    def sequence_group(self) -> dist.ProcessGroup:
        """The ranks holding the same batch half (ring x ulysses), token slice ``sequence_rank`` each."""
        if self.degrees.ring == 1:
            return self.mesh["ulysses"].get_group()
        if self.degrees.ulysses == 1:
            return self.mesh["ring"].get_group()
        return self.mesh["ring", "ulysses"]._flatten().get_group()

    @property
    def sequence_rank(self) -> int:
        return self.mesh["ring"].get_local_rank() * self.degrees.ulysses + self.mesh["ulysses"].get_local_rank()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of ``value`` over every rank (each holds an equal share of the batch and tokens)."""
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / dist.get_world_size()
