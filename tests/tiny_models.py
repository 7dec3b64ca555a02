"""Random-weight tiny transformers (the ``ruyi_tiny`` preset's widths) and their inputs, without the
parity fixture, so that speed tests also run on a GPU machine that has only the repository; and
plans validated by the real assembly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmarks.speed_setup import forward_inputs as preset_forward_inputs
from benchmarks.speed_setup import load_preset, random_transformer


def tiny_arch(*, head_dim: int = 16, heads: int = 2) -> dict[str, Any]:
    arch = dict(load_preset("ruyi_tiny")["transformer_arch"])
    arch.update(attention_head_dim=head_dim, num_attention_heads=heads, hidden_size=head_dim * heads)
    return arch


def tiny_transformer(
    *,
    head_dim: int = 16,
    heads: int = 2,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
):
    """4 blocks (2 with long-skip inputs); ``head_dim=88`` gives the real head width."""
    model = random_transformer(
        tiny_arch(head_dim=head_dim, heads=heads), dtype=dtype, device=device, seed=seed
    )
    model.test_arch = tiny_arch(head_dim=head_dim, heads=heads)  # for the input helpers below
    return model


def forward_inputs(model, *, frames: int, height: int, width: int, device: str = "cpu", dtype=torch.float32):
    """(args, kwargs) of a forward over ``frames`` latent frames of ``height`` x ``width`` latents."""
    return preset_forward_inputs(
        model.test_arch,
        latent_frames=frames,
        latent_height=height,
        latent_width=width,
        device=device,
        dtype=dtype,
    )


def block_inputs(model, *, frames: int, height: int = 8, width: int = 8, seed: int = 0):
    """(tokens, kwargs) of one block call, a long-skip input included (second-half blocks use it)."""
    g = torch.Generator().manual_seed(seed)
    param = next(model.parameters())
    arch = model.test_arch
    tokens = frames * (height // 2) * (width // 2)
    dim, context = arch["hidden_size"], arch["cross_attention_dim"]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(param.device, param.dtype)

    cos, sin = (
        torch.randn(tokens, arch["attention_head_dim"], generator=g).to(param.device) for _ in range(2)
    )
    text = randn(2, arch["text_len"] + arch["text_len_t5"], context)
    kwargs = dict(
        temb=randn(2, dim), encoder_hidden_states=text, image_rotary_emb=(cos, sin), num_frames=frames,
        clip_encoder_hidden_states=randn(2, arch["n_query"], context), skip=randn(2, tokens, dim),
    )  # fmt: skip
    return randn(2, tokens, dim), kwargs


NOWHERE = Path("/nonexistent/checkpoint")  # a check that ran after loading would fail on this path instead


def validate(**options: Any):
    """``PipelineSpec.from_names(NOWHERE, **options).validate()``: every check, no weights."""
    from ruyi.assembly import PipelineSpec

    return PipelineSpec.from_names(NOWHERE, **options).validate()


def pretend_hopper(monkeypatch) -> None:
    """A CUDA sm90 machine, as far as checks that run before any weight loads can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
