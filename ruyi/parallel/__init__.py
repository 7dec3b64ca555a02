"""Several processes (GPUs) sharing one generation, attached from outside like an offload strategy.

- ``ulysses``: every rank holds all frames but a slice of each frame's tokens; diffusers'
  context-parallel attention swaps to a slice of the heads for the self-attention.
- ``cfg``: the negative and positive guidance halves run on different ranks.
- ``shard_weights``: FSDP2 stores 1/world of each transformer block per rank.

A run is ``torchrun --nproc-per-node N scripts/infer.py parallel=ulysses ...``; the model files stay
single-device. Rank 0 alone writes outputs and logs progress; every rank ends with the same latents.
"""

from ruyi.parallel.groups import (
    Degrees,
    ParallelGroups,
    init_distributed,
    is_main_process,
    main_process_first,
    quiet_other_ranks,
    rank,
    shutdown,
    world_size,
)
from ruyi.parallel.strategy import CfgParallel, NoParallel, ParallelStrategy, UlyssesParallel

__all__ = [
    "CfgParallel",
    "Degrees",
    "NoParallel",
    "ParallelGroups",
    "ParallelStrategy",
    "UlyssesParallel",
    "init_distributed",
    "is_main_process",
    "main_process_first",
    "quiet_other_ranks",
    "rank",
    "shutdown",
    "world_size",
]
