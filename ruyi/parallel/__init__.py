"""Several processes (GPUs) sharing one generation, attached from outside like an offload strategy.

- ``ulysses``: every rank holds all frames but a slice of each frame's tokens; around the model's
  own self-attention kernel (``attention=``) an all-to-all swaps to a slice of the heads and back.
- ``cfg``: the negative and positive guidance halves run on different ranks.
- ``shard_weights``: FSDP2 stores 1/world of each transformer block per rank.

One class, :class:`ParallelStrategy`, carries the degrees (``parallel=none|ulysses|cfg`` are presets
of them). A run is ``torchrun --nproc-per-node N scripts/infer.py parallel=ulysses ...``: the entry
point joins the process group once (:func:`init_distributed`); the model files stay single-device.
Rank 0 alone writes outputs and logs progress; every rank ends with the same latents.
"""

from ruyi.parallel.groups import (
    Degrees,
    ParallelGroups,
    init_distributed,
    is_main_process,
    launched_world_size,
    main_process_first,
    quiet_other_ranks,
    rank,
    shutdown,
    world_size,
)
from ruyi.parallel.strategy import ParallelStrategy

__all__ = [
    "Degrees",
    "ParallelGroups",
    "ParallelStrategy",
    "init_distributed",
    "is_main_process",
    "launched_world_size",
    "main_process_first",
    "quiet_other_ranks",
    "rank",
    "shutdown",
    "world_size",
]
