"""The ``parallel`` strategy: how the processes of one ``torchrun`` share a generation.

One class carries the degrees, as diffusers' ``ContextParallelConfig`` or torchtitan's parallel
dims do: ``cfg`` (1 or 2) x ``ring`` x ``ulysses`` must equal the number of processes, and
``shard_weights`` adds FSDP2 over the transformer blocks. ``configs/parallel/{none,ulysses,cfg}.yaml``
are presets of its degrees (registered names of the same class), so ``parallel=ulysses
parallel.cfg=2`` and ``parallel=cfg parallel.ulysses=2`` mean the same thing. From Python the
degrees are the options: ``strategies={"parallel": ("ulysses", {"cfg": 2})}``.

``check`` reads the world size from the launcher's environment and joins nothing; the entry point
joins the process group once (:func:`ruyi.parallel.init_distributed`) and ``apply`` uses it.

Build order: plugins (LoRA merges into whole weights) -> precision -> **parallel** -> skip stack ->
VAE tiling -> offload (``none`` only) -> attention backend (which goes inside the sequence-parallel
exchange) -> compile.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch.distributed as dist

from ruyi.errors import AcceleratorRequired, ConfigError
from ruyi.extension import Extension
from ruyi.parallel.groups import Degrees, ParallelGroups, launched_world_size
from ruyi.registry import PARALLELS

log = logging.getLogger(__name__)

CFG_DEGREES = (1, 2)  # the guidance batch has two halves
MIN_DIFFUSERS = (0, 36)  # ring attention: ContextParallelConfig + dispatch_attention_fn(parallel_config=...)


@PARALLELS.register("ulysses")
@PARALLELS.register("cfg")
@PARALLELS.register("none")
class ParallelStrategy(Extension):
    """cfg x ring x ulysses processes share one generation (+ ``shard_weights``); none/ulysses/cfg are presets.

    ``ulysses=None`` takes every rank that cfg and ring leave (the default, so ``ParallelStrategy()``
    is one process alone and Ulysses under torchrun). Under Ulysses the self-attention runs the
    model's own processor with ``attention=``'s kernel, between two all-to-alls; ring attention
    (``ring > 1``) is diffusers' and needs CUDA.
    """

    stage: ClassVar[str] = "parallel"  # where the assembly attaches it (ruyi.extension.STAGES)

    def __init__(self, *, cfg: int = 1, ulysses: int | None = None, ring: int = 1, shard_weights: bool = False) -> None:
        for name, value in (("cfg", cfg), ("ring", ring), ("ulysses", 1 if ulysses is None else ulysses)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"parallel.{name}={value!r} must be an integer >= 1")
        if cfg not in CFG_DEGREES:
            raise ConfigError(f"parallel.cfg={cfg} is invalid; valid: 1 or 2 (the negative and positive halves of guidance)")
        if not isinstance(shard_weights, bool):
            raise ConfigError(f"parallel.shard_weights={shard_weights!r} must be true or false")
        self.cfg, self.ulysses, self.ring = cfg, ulysses, ring
        self.shard_weights = shard_weights
        self._patch_size = 2  # the real model's; check() reads the checkpoint's or the preset's
        self._applied: dict[str, Any] = {}

    @property
    def groups(self) -> ParallelGroups | None:
        """The mesh and groups of the attached run (None before ``apply`` or in a single process)."""
        return self._applied.get("groups")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(cfg={self.cfg}, ulysses={self.ulysses}, ring={self.ring}, "
                f"shard_weights={self.shard_weights})")  # fmt: skip

    # -- validation (no weights) ---------------------------------------------------------------
    def degrees(self, world: int) -> Degrees:
        """The degrees for ``world`` processes, or a ConfigError naming the combinations that fit."""
        ulysses = self.ulysses
        if ulysses is None:
            ulysses = max(1, world // (self.cfg * self.ring))
        degrees = Degrees(cfg=self.cfg, ring=self.ring, ulysses=ulysses)
        if degrees.total != world:
            raise ConfigError(
                f"{world} process(es) but parallel {degrees} uses {degrees.total}; "
                f"{_valid_layouts(world, self.ring)}"
            )
        return degrees

    def check(self, plan: Any) -> None:
        """Every check that needs no weights, on the assembly's plan (``plan.device``, ``.offload``,
        ``.precision``, ``.spec.model``). The world size is the launcher's (``WORLD_SIZE``); nothing
        is joined or moved. It notes the model's patch size for :meth:`check_request`."""
        degrees = self.degrees(launched_world_size())
        self._patch_size = _transformer_value(plan.spec.model, "patch_size") or 2
        if degrees.total == 1:
            if self.shard_weights:
                raise ConfigError("parallel.shard_weights=true needs several processes: launch with "
                                  "`torchrun --nproc-per-node 2 scripts/infer.py parallel=cfg parallel.shard_weights=true`")  # fmt: skip
            return
        if not getattr(plan.offload, "keeps_weights_on_device", False):
            raise ConfigError(
                f"offload={plan.spec.offload.name} cannot be combined with parallel {degrees}: each rank keeps its "
                "models on its own GPU; use offload=none, and parallel.shard_weights=true to divide the weights instead"
            )
        if self.shard_weights and not getattr(plan.precision, "plain_weights", False):
            raise ConfigError(f"parallel.shard_weights=true shards weights stored in the pipeline dtype; "
                              f"precision={plan.spec.precision.name} is not supported with it, use precision=bf16")  # fmt: skip
        if degrees.ring > 1:
            if plan.device.type != "cuda":
                raise AcceleratorRequired(f"parallel.ring={degrees.ring} needs CUDA attention kernels; use parallel.ulysses on {plan.device}")
            _check_diffusers()
        if degrees.sequence > 1:
            heads = _transformer_value(plan.spec.model, "num_attention_heads")
            if heads is not None:
                self.check_heads(heads, degrees)
        if plan.device.type == "cuda" and plan.device.index is not None:
            raise ConfigError(f"device={plan.device} pins every rank to one GPU; use device=cuda (rank r takes GPU LOCAL_RANK)")

    def check_request(self, request: Any) -> None:
        """The video size of one call (``request.height`` / ``.width`` in pixels) against ring x ulysses."""
        degrees = self.degrees(launched_world_size())
        if degrees.sequence > 1:
            self.check_tokens(request.height, request.width, degrees)

    def check_heads(self, heads: int, degrees: Degrees) -> None:
        if heads % degrees.ulysses:
            valid = [n for n in range(1, heads + 1) if heads % n == 0]
            raise ConfigError(f"parallel.ulysses={degrees.ulysses} does not divide the transformer's {heads} attention "
                              f"heads; valid: {', '.join(map(str, valid))}")  # fmt: skip

    def check_tokens(self, height: int, width: int, degrees: Degrees) -> None:
        from ruyi.models.transformer.inputs import LatentGrid

        tokens = LatentGrid.of_video(1, height, width, patch_size=self._patch_size).tokens_per_frame
        if tokens % degrees.sequence:
            valid = [n for n in range(1, 9) if tokens % n == 0]
            raise ConfigError(
                f"a {height}x{width} video has {tokens} tokens per frame, which do not split over ring x ulysses = "
                f"{degrees.sequence} ranks; valid: {', '.join(map(str, valid))}, or another video_size"
            )

    # -- attachment ----------------------------------------------------------------------------
    def apply(self, pipe: Any) -> None:
        """Attach every selected degree to ``pipe``, over the process group the entry point joined."""
        from ruyi.parallel.attention import context_parallel_config, wrap_self_attention
        from ruyi.parallel.cfg import CfgSplit
        from ruyi.parallel.sharding import shard_blocks
        from ruyi.parallel.tokens import TokenShard

        degrees = self.degrees(launched_world_size())
        if degrees.total == 1:
            return
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() != degrees.total:
            raise ConfigError(
                f"parallel {degrees} needs the process group of its {degrees.total} processes: call "
                "ruyi.parallel.init_distributed(device) under torchrun before building (scripts/infer.py does)"
            )
        device, transformer = pipe.execution_device, pipe.transformer
        groups = ParallelGroups.build(degrees, device.type)
        applied: dict[str, Any] = {"groups": groups}
        if degrees.sequence > 1:
            self.check_heads(transformer.num_heads, degrees)
            ring = None
            if degrees.ring > 1:
                ring = context_parallel_config(groups.mesh, ring=degrees.ring, ulysses=degrees.ulysses, device=device)
            applied["attention"] = wrap_self_attention(transformer.blocks, group=groups.sequence_group,
                                                       parts=degrees.sequence, ring_config=ring)  # fmt: skip
            applied["tokens"] = TokenShard(groups).attach(transformer)
        if degrees.cfg > 1:
            applied["cfg"] = CfgSplit(groups).attach(transformer)
        # plugins whose statistics are means over the batch and tokens must see the global mean
        applied["plugins"] = [p for p in pipe.callbacks if hasattr(p, "across_ranks")]
        for plugin in applied["plugins"]:
            plugin.across_ranks = groups.mean
        if self.shard_weights:
            shard_blocks(transformer, device_type=device.type, world=degrees.total)
            applied["sharded"] = True
        self._applied = applied
        log.info("parallel %s%s on %s", degrees, " + sharded weights" if self.shard_weights else "", device)

    def remove(self, pipe: Any) -> None:
        """Take every hook off again. Sharded weights cannot be gathered back in place."""
        from ruyi.parallel.attention import unwrap_self_attention

        applied = self._applied
        if applied.get("sharded"):
            raise NotImplementedError("parallel.shard_weights: sharded weights stay sharded; build a new pipeline instead")
        for plugin in applied.get("plugins", ()):
            plugin.across_ranks = None
        if "cfg" in applied:
            applied["cfg"].detach()
        if "tokens" in applied:
            applied["tokens"].detach()
            unwrap_self_attention(applied["attention"])
        self._applied = {}


def _valid_layouts(world: int, ring: int) -> str:
    options = []
    for cfg in CFG_DEGREES:
        if world % (cfg * ring) == 0:
            parts = [f"parallel.cfg={cfg}"] if cfg > 1 else []
            if world // (cfg * ring) > 1:
                parts.append(f"parallel.ulysses={world // (cfg * ring)}")
            options.append(" ".join(parts) or "parallel=none")
    launch = "run without torchrun, or " if world > 1 else "launch with `torchrun --nproc-per-node N`, or "
    return f"with {world} process(es) use {' or '.join(options) or 'another process count'} ({launch}change the degrees)"


def _transformer_value(model: Any, key: str) -> int | None:
    """``key`` of the checkpoint's ``transformer/config.json``, else of the preset's architecture
    (no weights read); None when neither is there yet (the tiny model before creation)."""
    config = None if model.path is None else Path(model.path) / "transformer" / "config.json"
    if config is not None and config.is_file():
        value = json.loads(config.read_text()).get(key)
        if value is not None:
            return int(value)
    arch = (model.arch or {}).get("transformer_arch") or {}
    return arch.get(key)


def _check_diffusers() -> None:
    import diffusers

    version = tuple(int(p) for p in diffusers.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_DIFFUSERS:
        raise ConfigError(f"parallel.ring needs diffusers >= {'.'.join(map(str, MIN_DIFFUSERS))} "
                          f"(installed {diffusers.__version__}); pip install -U diffusers")  # fmt: skip
