"""The transformer's inputs as one typed object, and the latent/token geometry they follow.

Every caller of ``RuyiTransformer3D.forward`` (the pipeline, training, the memory estimate,
benchmarks, tests) builds its arguments here, so the forward's twelve arguments, the add-time-ids
and the rotary table exist once. The geometry comes from the VAE's compression (4x in time, 8x in
space for Ruyi's MagViT) and the transformer's patch size (2 for the 7B, 1 for the tiny default):
a parallel layout or a memory estimate that counts tokens asks :class:`LatentGrid`, not a constant.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

ORIGINAL_SIZE = (1024, 1024)  # the add-time-ids' "original size", fixed in the original
ROTARY_BASE = 512  # rotary grid base size in pixels, as trained
VAE_TEMPORAL, VAE_SPATIAL, LATENT_CHANNELS = 4, 8, 16  # Ruyi's MagViT VAE
CLIP_TOKENS = 256  # CLIP ViT-L/14 at 224 px: 16 x 16 patches


def full_config(cls: type, arch: Mapping[str, Any]) -> dict[str, Any]:
    """``arch`` (a preset's partial ``transformer_arch``) over ``cls``'s constructor defaults,
    restricted to what the constructor takes: the full config :func:`dummy_inputs` reads."""
    params = inspect.signature(cls.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **{k: v for k, v in arch.items() if k in params and k != "self"}}


@dataclass(frozen=True)
class LatentGrid:
    """The latent video of one request: ``frames`` x ``height`` x ``width`` latents, cut into
    ``patch_size`` x ``patch_size`` tokens; ``spatial``/``temporal``: the VAE's compression."""

    frames: int
    height: int
    width: int
    patch_size: int = 2
    spatial: int = VAE_SPATIAL
    temporal: int = VAE_TEMPORAL

    @classmethod
    def of_video(cls, frames: int, height: int, width: int, *, patch_size: int = 2,
                 spatial: int = VAE_SPATIAL, temporal: int = VAE_TEMPORAL) -> LatentGrid:  # fmt: skip
        """The grid of a ``frames`` x ``height`` x ``width`` pixel video (one frame stays one latent frame)."""
        latent_frames = 1 if frames == 1 else frames // temporal
        return cls(latent_frames, height // spatial, width // spatial, patch_size, spatial, temporal)

    @classmethod
    def for_models(cls, frames: int, height: int, width: int, *, transformer, vae) -> LatentGrid:
        """The grid a loaded VAE and transformer make of a pixel video."""
        return cls.of_video(frames, height, width, patch_size=transformer.patch_size,
                            spatial=vae.spatial_compression, temporal=vae.temporal_compression)  # fmt: skip

    @property
    def tokens_per_frame(self) -> int:
        return (self.height // self.patch_size) * (self.width // self.patch_size)

    @property
    def tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(height, width) of the video in pixels."""
        return self.height * self.spatial, self.width * self.spatial

    def shape(self, channels: int = LATENT_CHANNELS, batch: int = 1) -> tuple[int, int, int, int, int]:
        """(B, C, F, h, w) of a latent tensor on this grid."""
        return (batch, channels, self.frames, self.height, self.width)

    def rotary(self, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (tokens_per_frame, head_dim): the 2D rotary table of one frame, fitted
        into the trained 512 px base grid as the original pipeline does."""
        from ruyi.models.transformer.transformer3d import rotary_embedding

        return rotary_embedding(self.height, self.width, head_dim=head_dim, patch_size=self.patch_size,
                                base_size=ROTARY_BASE // self.spatial // self.patch_size)  # fmt: skip


def image_meta(grid: LatentGrid, batch: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, 6) add-time-ids: original size (fixed), target size, crop offset (none)."""
    height, width = grid.pixel_size
    meta = torch.tensor([[*ORIGINAL_SIZE, height, width, 0, 0]], device=device, dtype=dtype)
    return meta.repeat(batch, 1)


@dataclass
class TransformerInputs:
    """Everything ``RuyiTransformer3D.forward`` takes.

    hidden_states (B, 16, F, h, w); timestep (B,); encoder_hidden_states (B, text_len, Dc) +
    text_embedding_mask (B, text_len); encoder_hidden_states_t5 (B, text_len_t5, Dt5) +
    text_embedding_mask_t5 (B, text_len_t5); image_meta_size (B, 6); style (B,); image_rotary_emb
    (cos, sin) of one frame's patch grid; inpaint_latents (B, 32, F, h, w) (mask + masked-video
    latents); clip_encoder_hidden_states (B, tokens, projection_dim) + clip_attention_mask (B, n_query).
    """

    hidden_states: torch.Tensor
    timestep: torch.Tensor
    encoder_hidden_states: torch.Tensor
    text_embedding_mask: torch.Tensor
    encoder_hidden_states_t5: torch.Tensor
    text_embedding_mask_t5: torch.Tensor
    image_meta_size: torch.Tensor
    style: torch.Tensor
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor]
    inpaint_latents: torch.Tensor | None = None
    clip_encoder_hidden_states: torch.Tensor | None = None
    clip_attention_mask: torch.Tensor | None = None

    def kwargs(self) -> dict[str, Any]:
        """The forward's keyword arguments (all but ``hidden_states`` and ``timestep``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del fields["hidden_states"], fields["timestep"]
        return fields

    def as_call(self) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
        """``(args, kwargs)`` for ``transformer(*args, **kwargs)``."""
        return (self.hidden_states, self.timestep), self.kwargs()

    def replace(self, **changes: Any) -> TransformerInputs:
        return dataclasses.replace(self, **changes)

    def __call__(self, transformer: torch.nn.Module) -> torch.Tensor:
        return transformer(self.hidden_states, self.timestep, **self.kwargs())


def dummy_inputs(config: Mapping[str, Any], grid: LatentGrid, *, batch: int = 2, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", seed: int = 0, timestep: float = 500.0) -> TransformerInputs:  # fmt: skip
    """Random inputs of the right shapes for a transformer of ``config`` (its full config: every
    constructor argument) on ``grid`` (CFG batch 2 by default); on ``device="meta"`` they are
    storage-free (memory estimates at the real shape)."""
    meta = torch.device(device).type == "meta"
    g = None if meta else torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        if meta:
            return torch.empty(shape, device="meta", dtype=dtype)
        return torch.randn(*shape, generator=g).to(device, dtype)

    def ones(*shape: int, kind: torch.dtype) -> torch.Tensor:
        return torch.ones(shape, device=device, dtype=kind)

    latent = config["out_channels"] // 2 if config.get("learn_sigma", True) else config["out_channels"]
    head_dim = config["attention_head_dim"]
    cos, sin = ((torch.empty(grid.tokens_per_frame, head_dim, device="meta"),) * 2 if meta
                else (t.to(device) for t in grid.rotary(head_dim)))  # fmt: skip
    return TransformerInputs(
        hidden_states=randn(*grid.shape(latent, batch)),
        timestep=torch.full((batch,), timestep, device=device, dtype=dtype),
        encoder_hidden_states=randn(batch, config["text_len"], config["cross_attention_dim"]),
        text_embedding_mask=ones(batch, config["text_len"], kind=torch.long),
        encoder_hidden_states_t5=randn(batch, config["text_len_t5"], config["cross_attention_dim_t5"]),
        text_embedding_mask_t5=ones(batch, config["text_len_t5"], kind=torch.long),
        image_meta_size=image_meta(grid, batch, device=device, dtype=dtype),
        style=torch.zeros(batch, device=device, dtype=torch.long),
        image_rotary_emb=(cos, sin),
        inpaint_latents=randn(*grid.shape(config["in_channels"] - latent, batch)),
        clip_encoder_hidden_states=randn(batch, CLIP_TOKENS, config["projection_dim"]),
        clip_attention_mask=ones(batch, config["n_query"], kind=dtype),
    )
