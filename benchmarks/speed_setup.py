"""What ``benchmarks/speed.py`` measures with: random-weight models at a preset's shape, the inputs
of one transformer forward, the FLOPs of that forward, and the speed options it compares.

Also used by the tests (tests/tiny_models.py), so every piece runs on the CPU at tiny sizes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ruyi.models.loading import random_model
from ruyi.models.transformer import RuyiTransformer3D
from ruyi.models.transformer.inputs import LatentGrid, dummy_inputs
from ruyi.models.transformer.inputs import full_config as full_arch
from ruyi.models.vae import MagvitVAE3D

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_preset(name: str) -> dict[str, Any]:
    """``configs/model/<name>.yaml`` as a dict (``transformer_arch``, ``vae_arch``, ...)."""
    return yaml.safe_load((CONFIGS / "model" / f"{name}.yaml").read_text())


def random_transformer(
    arch: dict[str, Any], *, dtype: torch.dtype, device: str | torch.device, seed: int = 0
):
    """The transformer at ``arch``'s shape with N(0, 0.02) weights made on ``device``."""
    return random_model(RuyiTransformer3D, arch, dtype=dtype, device=device, seed=seed)


def random_vae(arch: dict[str, Any], *, dtype: torch.dtype, device: str | torch.device, seed: int = 1):
    return random_model(MagvitVAE3D, arch, dtype=dtype, device=device, seed=seed)


def forward_inputs(
    arch: dict[str, Any],
    *,
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    batch: int = 2,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    """``(args, kwargs)`` of one transformer forward as the pipeline makes it (CFG batch 2 by default)."""
    a = full_arch(RuyiTransformer3D, arch)
    grid = LatentGrid(latent_frames, latent_height, latent_width, patch_size=a["patch_size"])
    return dummy_inputs(a, grid, batch=batch, dtype=dtype, device=device, seed=seed).as_call()


def parse_shape(text: str) -> tuple[int, int]:
    """``"768x120"`` -> (768, 120): a square video of that side and frame count."""
    side, frames = (int(v) for v in text.lower().split("x"))
    return side, frames


def latent_grid(side: int, frames: int) -> dict[str, int]:
    grid = LatentGrid.of_video(frames, side, side)
    return {"latent_frames": grid.frames, "latent_height": grid.height, "latent_width": grid.width}


# -- FLOPs ------------------------------------------------------------------------------------------
@dataclass
class FlopCount:
    linear: int = 0
    attention: int = 0

    @property
    def total(self) -> int:
        return self.linear + self.attention


@torch.no_grad()
def count_flops(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[FlopCount, Any]:
    """Multiply-add FLOPs (x2) of one forward, and its output: every ``nn.Linear`` (rows x in x
    out) and every diffusers ``Attention`` (q kᵀ and p v: 4 x B x heads x Lq x Lk x head_dim),
    read off hooks during a real forward."""
    from diffusers.models.attention_processor import Attention

    count = FlopCount()

    def on_linear(module: torch.nn.Linear, inputs: tuple, _out: Any) -> None:
        rows = inputs[0].numel() // module.in_features
        count.linear += 2 * rows * module.in_features * module.out_features

    def on_attention(module: Attention, inputs: tuple, kw: dict[str, Any]) -> None:
        hidden = kw.get("hidden_states", inputs[0] if inputs else None)
        context = kw.get("encoder_hidden_states")
        batch, lq = hidden.shape[:2]
        lk = lq if context is None else context.shape[1]
        head_dim = module.inner_dim // module.heads
        count.attention += 4 * batch * module.heads * lq * lk * head_dim

    handles = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
        elif isinstance(module, Attention):
            handles.append(module.register_forward_pre_hook(on_attention, with_kwargs=True))
    try:
        out = model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return count, out


# -- options ----------------------------------------------------------------------------------------
@dataclass
class SpeedOption:
    """One column of the comparison, parsed from ``+``-joined tokens: an attention backend name,
    ``padN`` (pad the head dim to a multiple of N), ``compile`` or ``compile@MODE``, ``dynamic``
    (compile with dynamic shapes), ``fp8`` (precision=fp8_compute). ``eager`` = today's default:
    torch's SDPA, no compile."""

    name: str
    attention: str = "sdpa"
    pad: int = 0
    compile: bool = False
    mode: str | None = None
    dynamic: bool | None = None
    fp8: bool = False


def parse_option(text: str, attention_names: list[str]) -> SpeedOption:
    option = SpeedOption(name=text)
    for token in text.split("+"):
        if token == "eager":
            continue
        if token in attention_names:
            option.attention = token
        elif token.startswith("pad") and token[3:].isdigit():
            option.pad = int(token[3:])
        elif token == "compile" or token.startswith("compile@"):
            option.compile, option.mode = True, (token.split("@", 1)[1] if "@" in token else None)
        elif token == "dynamic":
            option.compile, option.dynamic = True, True
        elif token == "fp8":
            option.fp8 = option.compile = True  # fp8_compute requires compile
        else:
            raise SystemExit(
                f"unknown option token {token!r} in {text!r}: use eager, {', '.join(attention_names)}, padN, "
                "compile[@MODE], dynamic, fp8, joined by '+'"
            )
    return option


@contextlib.contextmanager
def applied(option: SpeedOption, model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Attach the option's attention backend and compile its blocks; undo both on exit."""
    from ruyi.compile import RegionalCompile
    from ruyi.registry import ATTENTIONS

    backend = ATTENTIONS.get(option.attention)(pad_head_dim=option.pad)
    backend.attach(model, device=device)
    compiler = None
    try:
        if option.compile:
            torch._dynamo.reset()  # a fresh compile per measurement: warm-up counted, no recompile limit
            compiler = RegionalCompile(mode=option.mode, dynamic=option.dynamic)
            compiler.compile_blocks(model, device=device)
        yield
    finally:
        if compiler is not None:
            compiler.restore()
        backend.detach()


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32."""
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
