"""Sharded transformer weights: FSDP2 (``fully_shard``) per block over every rank.

Each rank stores 1/world of every block's weights; a block's weights are all-gathered while the
block before it runs and freed after its own forward, so a rank holds its shards plus two whole
blocks.
The small layers around the stack (embedders, output projection) stay whole on every rank.
"""

from __future__ import annotations

import logging

import torch
from torch.distributed.device_mesh import init_device_mesh

log = logging.getLogger(__name__)


def shard_blocks(transformer: torch.nn.Module, *, device_type: str, world: int) -> int:
    """``fully_shard`` every module of ``transformer.blocks``; returns the number of sharded parameters.

    Blocks on the CPU move to the mesh's device one at a time while they are sharded, so a model
    larger than one GPU can be sharded straight from host memory.
    """
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("shard",))
    sharded, blocks = 0, list(transformer.blocks)
    for block in blocks:
        sharded += sum(p.numel() for p in block.parameters())
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    # the transformer becomes the root that owns the blocks' shared communication state; its own
    # small layers stay whole (not sharded, not moved)
    outside = set(transformer.parameters()) - {p for block in blocks for p in block.parameters()}
    fully_shard(transformer, mesh=mesh, ignored_params=outside or None)
    # gather block i+1 while block i computes: the transfer hides behind compute, two blocks held whole
    for block, following in zip(blocks, blocks[1:]):
        block.set_modules_to_forward_prefetch([following])
    log.info("sharded %d transformer block parameters over %d ranks", sharded, world)
    return sharded
