"""``compile=none|regional|auto``: ``torch.compile`` of the transformer's repeated blocks.

Regional compilation (diffusers' ``compile_repeated_blocks`` does the same): each block's
``__call__`` is compiled in place (``nn.Module.compile``), so parameter names, hooks, LoRA merges
and offload keep working, and the 40 blocks share the graphs of one code object instead of one
40-block graph. benchmarks/RESULTS.md records it on an H100: 17.2 -> 14.2 s at 768² x 120 frames, 0.64 ->
0.38 s at 512² x 24. A block traces with zero graph breaks (tests/test_compile.py).

Recompiles, measured with ``benchmarks/compile_shapes.py`` (tiny model, CPU, torch 2.13) over
(latent frames, latent side) = (2, 8), (4, 8), (2, 16), (6, 12), (2, 8); a block comes in two
variants (with and without a long-skip input), so each compile is 2 graphs:

| ``dynamic`` | graphs compiled at each shape | |
|---|---|---|
| None (torch's default) | 2, 2, 0, 0, 0 | static first; the first change recompiles once as dynamic |
| False | 2, 2, 2, 2, 0 | every new (resolution, frames) pair, up to dynamo's limit of 8 |
| True | 2, 2, 0, 0, 0 | ``num_frames`` is a Python int, specialised until it first changes |

So a process that serves one resolution and length compiles once; a second shape costs one more
warm-up, after which every resolution and length runs without recompiling.

Inductor needs a C++ compiler on CPU and Triton on CUDA. Apply it last in the build order (after
precision, offload and the attention backend), so that it compiles what will run.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from ruyi.compile_cache import enable_compile_cache
from ruyi.errors import ConfigError
from ruyi.extension import Extension
from ruyi.models.attention import prepare_attention
from ruyi.models.transformer.inputs import VAE_SPATIAL, LatentGrid
from ruyi.registry import COMPILES

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# modes that record CUDA graphs: the 40 blocks share one compiled graph, so each block's replay
# reuses the memory of the previous block's outputs while the long skips still need them (benchmarks/RESULTS.md,
# H200: "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@COMPILES.register("none")
class NoCompile(Extension):
    """Eager execution (the default)."""

    stage: ClassVar[str] = "compile"
    compiles: ClassVar[bool] = False

    def check(self, plan: Any) -> None:
        pass

    def apply(self, pipe: Any) -> None:
        pass

    def remove(self, pipe: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "NoCompile()"


@COMPILES.register("regional")
class RegionalCompile(Extension):
    """``torch.compile`` per transformer block: ``mode`` (None = torch's default, or one of
    ``MODES``), ``fullgraph`` (fail instead of breaking the graph), ``dynamic`` (None/True/False,
    see the module docstring), ``backend`` (``inductor``; ``aot_eager``/``eager`` for debugging).
    ``vae=true`` also compiles the VAE decoder, which runs once per latent mini-batch (measured
    separately by ``benchmarks/speed.py --vae``).
    """

    stage: ClassVar[str] = "compile"
    compiles: ClassVar[bool] = True

    def __init__(
        self,
        *,
        mode: str | None = None,
        fullgraph: bool = False,
        dynamic: bool | None = None,
        backend: str | Callable[..., Any] = "inductor",
        vae: bool = False,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise ConfigError(
                f"compile.mode={mode!r} is not one of {', '.join(MODES)} (or null for torch's default)"
            )
        if dynamic not in (None, True, False):
            raise ConfigError(f"compile.dynamic={dynamic!r} must be null, true or false")
        self.mode, self.fullgraph, self.dynamic, self.backend = mode, bool(fullgraph), dynamic, backend
        self.vae = bool(vae)
        self._compiled: list[torch.nn.Module] = []

    def __repr__(self) -> str:
        return (
            f"RegionalCompile(mode={self.mode}, fullgraph={self.fullgraph}, dynamic={self.dynamic}, "
            f"backend={self.backend}, vae={self.vae})"
        )

    def check(self, plan: Any) -> None:
        """Options were validated in ``__init__``. CUDA graph modes cannot serve shared block graphs
        (``CUDA_GRAPH_MODES``). A strategy that moves a block's weights inside its
        forward (``loads_per_block``: group/sequential offload) breaks the block's graph, which
        ``fullgraph`` forbids."""
        if self.mode in CUDA_GRAPH_MODES and plan.device.type == "cuda":
            raise ConfigError(
                f"compile.mode={self.mode} records CUDA graphs, which cannot replay blocks that share one "
                "graph while later blocks still read earlier outputs (the long skips); use "
                "compile.mode=max-autotune-no-cudagraphs or null"
            )
        if self.fullgraph and plan.has("loads_per_block"):
            raise ConfigError(
                f"compile.fullgraph=true cannot trace blocks whose weights offload={plan.spec.offload.name} "
                "moves inside their forward; use compile.fullgraph=false or offload=none/model"
            )

    def apply(self, pipe: Any) -> None:
        self.compile_blocks(pipe.transformer, device=getattr(pipe, "execution_device", None))
        if self.vae:
            self.compile_module(pipe.vae.decoder)

    def remove(self, pipe: Any) -> None:
        self.restore()

    def compile_blocks(self, model: torch.nn.Module, *, device: torch.device | None = None) -> int:
        """Compile ``model``'s repeated blocks in place; returns how many. ``device``: where they
        will run, so that attention backends decide their kernels before tracing."""
        if device is not None:
            prepare_attention(model, torch.device(device))
        blocks = repeated_blocks(model)
        for block in blocks:
            self.compile_module(block)
        log.info("%s: %d blocks of %s", self, len(blocks), type(model).__name__)
        return len(blocks)

    def compile_module(self, module: torch.nn.Module) -> None:
        """Compile one region in place (``nn.Module.compile``: names, hooks and weights stay)."""
        options: dict[str, Any] = {
            "fullgraph": self.fullgraph,
            "dynamic": self.dynamic,
            "backend": self.backend,
        }
        if self.mode is not None:
            options["mode"] = self.mode
        if self.backend == "inductor":
            enable_compile_cache()  # before the first compile: the kernels go to ruyi's folder on disk
        module.compile(**options)
        self._compiled.append(module)

    def restore(self) -> None:
        """Back to eager ``__call__`` (torch has no public inverse of ``Module.compile``)."""
        for block in self._compiled:
            block._compiled_call_impl = None
        self._compiled = []


# Measured on an H200 at the real shape (benchmarks/RESULTS.md; CFG batch 2, FlashAttention-3
# both ways): regional compile saves 0.254 s a step at 6 144 tokens (512² x 24) and 2.75 s at
# 69 120 (768² x 120), ~4e-5 s per token and step; its first call takes 10-20 s longer than a step
SAVED_S_PER_TOKEN_STEP = 4.0e-5
WARMUP_S = 20.0
RESIDENT_OFFLOADS = ("none", "model")  # the block weights stay put while a block runs


@COMPILES.register("auto")
class CompileAuto(RegionalCompile):
    """``compile=auto`` (the default of ``infer.yaml``): ``compile=regional`` where it pays for its
    warm-up within the run, eager elsewhere. Decided at validation, before any weight loads, from
    the shape and step count the run asks for (``frames``, ``base_resolution`` / ``video_size``,
    ``steps``; the YAML reads them from the run's config): on a CUDA device with Triton, when the
    predicted saving (``SAVED_S_PER_TOKEN_STEP`` x tokens x steps) exceeds ``WARMUP_S``, or when the
    precision needs compile (``fp8_compute``). Never on the CPU, nor with an offload other than
    ``none``/``model`` (group and sequential move weights while the blocks run). So 25 steps of
    512² x 24 stay eager (6 144 tokens: ~6 s saved for ~20 s of compiling) and 512² x 120 or
    768² x 48 compile. The other keys are ``regional``'s."""

    def __init__(
        self,
        *,
        frames: int = 120,
        base_resolution: int = 768,
        video_size: Sequence[int] | None = None,
        steps: int = 25,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        # hints, not checked here: the request's own checks name a bad frames/steps/video_size
        self.frames, self.base_resolution = frames, base_resolution
        self.video_size, self.steps = video_size, steps
        self.patch_size = 2  # the real model's; resolve() reads the preset's when it names one
        self.enabled, self.reason = False, "not decided (the plan was not validated)"

    def __repr__(self) -> str:
        return f"CompileAuto({'regional' if self.enabled else 'eager'}: {self.reason})"

    @property
    def compiles(self) -> bool:  # type: ignore[override]
        return self.enabled

    @property
    def tokens(self) -> int | None:
        """Transformer tokens of one video (8x spatial VAE, ``patch_size`` squared patches, 4 frames a
        latent frame); None when the hints are not a valid shape."""
        try:
            frames = int(self.frames)
            height, width = (
                (int(v) for v in self.video_size)
                if self.video_size is not None
                else (int(self.base_resolution),) * 2
            )
        except (TypeError, ValueError):
            return None
        # a size that is not a whole number of patches still costs its partial patches (ceil)
        cell = VAE_SPATIAL * self.patch_size
        height, width = math.ceil(height / cell) * cell, math.ceil(width / cell) * cell
        return LatentGrid.of_video(frames, height, width, patch_size=self.patch_size).tokens

    def decide(self, plan: Any) -> tuple[bool, str]:
        if plan.device.type != "cuda":
            return False, f"device {plan.device}: compiled kernels pay off on CUDA"
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed"
        if plan.spec.offload.name not in RESIDENT_OFFLOADS:
            return (
                False,
                f"offload={plan.spec.offload.name} moves weights while the blocks run (not measured compiled)",
            )
        if getattr(plan.precision, "needs_compile", False):
            return True, f"precision {plan.precision!r} needs it"
        tokens, steps = self.tokens, self.steps
        if tokens is None or not isinstance(steps, int) or steps < 1:
            return False, f"no valid shape to plan for (frames={self.frames!r}, steps={steps!r})"
        saved = SAVED_S_PER_TOKEN_STEP * tokens * steps
        verdict = "saves" if saved > WARMUP_S else "would save only"
        return saved > WARMUP_S, (
            f"{verdict} ~{saved:.0f} s over {steps} steps of {tokens} tokens, for ~{WARMUP_S:.0f} s of warm-up"
        )

    def resolve(self, plan: Any) -> Any:
        arch = (plan.spec.model.arch or {}).get("transformer_arch") or {}
        self.patch_size = int(arch.get("patch_size", self.patch_size))
        self.enabled, self.reason = self.decide(plan)
        log.info("compile=auto: %s (%s)", "regional" if self.enabled else "eager", self.reason)
        return plan

    def check(self, plan: Any) -> None:
        if self.enabled:
            super().check(plan)

    def apply(self, pipe: Any) -> None:
        if self.enabled:
            super().apply(pipe)

    def remove(self, pipe: Any) -> None:
        if self.enabled:
            super().remove(pipe)


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose class names ``model._repeated_blocks`` lists (the diffusers convention),
    else the entries of ``model.blocks``."""
    names = set(getattr(model, "_repeated_blocks", None) or ())
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found and isinstance(getattr(model, "blocks", None), torch.nn.ModuleList):
        found = list(model.blocks)
    if not found:
        raise ConfigError(
            f"compile=regional: {type(model).__name__} declares no repeated blocks "
            "(_repeated_blocks or a `blocks` ModuleList); use compile=none"
        )
    return found
