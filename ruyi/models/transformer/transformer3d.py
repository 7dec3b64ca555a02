"""Ruyi's 3D diffusion transformer (the checkpoint's ``HunyuanTransformer3DModel``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from diffusers.models.embeddings import (
    HunyuanCombinedTimestepTextSizeStyleEmbedding,
    PatchEmbed,
    PixArtAlphaTextProjection,
    get_2d_rotary_pos_embed,
)
from diffusers.models.normalization import AdaLayerNormContinuous
from einops import rearrange
from torch import nn

from ruyi.models.transformer.block import RuyiDiTBlock
from ruyi.models.transformer.layers import ClipResampler
from ruyi.registry import TRANSFORMERS


class SkipStack(list):
    """Default long-skip store: a plain in-memory LIFO (``push`` / ``pop``)."""

    def push(self, tensor: torch.Tensor) -> None:
        self.append(tensor)


@TRANSFORMERS.register("ruyi_transformer3d")
class RuyiTransformer3D(nn.Module):
    """HunyuanDiT-based video DiT with U-ViT long skips, a per-block time table, and CLIP-image
    cross-attention for inpainting.

    ``forward(hidden_states (B, 16, F, H, W), timestep (B,), ...) -> (B, out_channels, F, H, W)``:
    the first 16 output channels are the v-prediction, the rest the unused learned variance.
    ``skip_stack_factory`` makes the long-skip store of each forward: offload strategies replace
    it (``ruyi.offload.skip_steps``) to park those activations elsewhere.
    """

    subfolder: ClassVar[str] = "transformer"
    # The original applies these on top of config.json when loading; the released weights need them.
    config_overrides: ClassVar[dict[str, Any]] = {
        "basic_block_type": "basic", "after_norm": False, "time_position_encoding": True,
    }  # fmt: skip
    _no_split_modules: ClassVar[list[str]] = ["RuyiDiTBlock"]
    # reads its children's weights directly (no child forward): must be loaded whole by offload hooks
    _preload_module_classes: ClassVar[list[str]] = ["HunyuanDiTAttentionPool", "MultiheadAttention"]
    _keep_in_fp32_modules: ClassVar[list[str]] = []
    _skip_layerwise_casting_patterns: ClassVar[list[str]] = ["pos_embed", "norm", "t_embed", "padding", "clip_projection"]

    def __init__(
        self,
        *,
        num_attention_heads: int = 32,
        attention_head_dim: int = 88,
        in_channels: int = 48,
        out_channels: int = 32,
        patch_size: int = 2,
        n_query: int = 16,
        projection_dim: int = 1024,
        activation_fn: str = "gelu-approximate",
        sample_size: int = 128,
        hidden_size: int = 2816,
        num_layers: int = 40,
        mlp_ratio: float = 4.3637,
        learn_sigma: bool = True,
        cross_attention_dim: int = 1024,
        norm_type: str = "layer_norm",
        cross_attention_dim_t5: int = 2048,
        pooled_projection_dim: int = 1024,
        text_len: int = 77,
        text_len_t5: int = 256,
        basic_block_type: str = "basic",
        time_position_encoding: bool = True,
        after_norm: bool = False,
    ) -> None:
        super().__init__()
        if basic_block_type != "basic":
            raise NotImplementedError(f"basic_block_type={basic_block_type!r}: only 'basic' (Ruyi-Mini-7B) is implemented")
        if after_norm:
            raise NotImplementedError("after_norm=true is not used by Ruyi-Mini-7B and is not implemented")
        if norm_type != "layer_norm":
            raise NotImplementedError(f"norm_type={norm_type!r}: only 'layer_norm' is implemented")
        inner = num_attention_heads * attention_head_dim
        if inner != hidden_size:
            raise ValueError(f"hidden_size={hidden_size} must equal heads x head_dim = {inner}")
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_attention_heads, attention_head_dim
        self.patch_size, self.n_query, self.num_layers = patch_size, n_query, num_layers
        self.out_channels = out_channels
        # in = noisy latents + inpaint latents (mask + masked video); a plain learn-sigma model has in*2 = out
        self.inpaint = in_channels * 2 != out_channels if learn_sigma else in_channels != out_channels

        self.text_embedder = PixArtAlphaTextProjection(
            in_features=cross_attention_dim_t5, hidden_size=cross_attention_dim_t5 * 4,
            out_features=cross_attention_dim, act_fn="silu_fp32",
        )  # fmt: skip
        self.text_embedding_padding = nn.Parameter(torch.randn(text_len + text_len_t5, cross_attention_dim))
        self.pos_embed = PatchEmbed(
            height=sample_size, width=sample_size, in_channels=in_channels, embed_dim=hidden_size,
            patch_size=patch_size, pos_embed_type=None,
        )  # fmt: skip
        self.time_extra_emb = HunyuanCombinedTimestepTextSizeStyleEmbedding(
            hidden_size, pooled_projection_dim=pooled_projection_dim, seq_len=text_len_t5,
            cross_attention_dim=cross_attention_dim_t5,
        )  # fmt: skip
        self.blocks = nn.ModuleList(
            RuyiDiTBlock(
                hidden_size, num_attention_heads, cross_attention_dim=cross_attention_dim,
                ff_inner_dim=int(hidden_size * mlp_ratio), activation_fn=activation_fn,
                long_skip=layer > num_layers // 2, time_position_encoding=time_position_encoding,
                clip_attention=self.inpaint,
            )  # fmt: skip
            for layer in range(num_layers)
        )
        if self.inpaint:
            self.clip_padding = nn.Parameter(torch.randn(n_query, cross_attention_dim) * 0.02)
            self.clip_projection = ClipResampler(n_query, cross_attention_dim, num_attention_heads, projection_dim)
        self.norm_out = AdaLayerNormContinuous(hidden_size, hidden_size, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.skip_stack_factory: Callable[[], Any] = SkipStack

    # -- inputs --------------------------------------------------------------------------------
    def embed_text(self, emb1, mask1, emb2, mask2) -> torch.Tensor:
        """Both text encoders' states -> (B, text_len + text_len_t5, Dc), padding where masked."""
        batch, tokens, _ = emb2.shape
        emb2 = self.text_embedder(emb2.reshape(batch * tokens, -1)).reshape(batch, tokens, -1)
        text = torch.cat([emb1, emb2], dim=1)
        mask = torch.cat([mask1, mask2], dim=-1)[..., None].bool()
        return torch.where(mask, text, self.text_embedding_padding)

    def embed_clip(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CLIP features (B, tokens, clip_hidden) -> (B, n_query, Dc); masked rows get the padding."""
        clip = self.clip_projection(features).reshape(features.shape[0], -1, self.text_embedding_padding.shape[-1])
        return torch.where(mask[..., None].bool(), clip, self.clip_padding)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        *,
        encoder_hidden_states: torch.Tensor,
        text_embedding_mask: torch.Tensor,
        encoder_hidden_states_t5: torch.Tensor,
        text_embedding_mask_t5: torch.Tensor,
        image_meta_size: torch.Tensor,
        style: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
        inpaint_latents: torch.Tensor | None = None,
        clip_encoder_hidden_states: torch.Tensor | None = None,
        clip_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states (B, 16, F, H, W); timestep (B,); encoder_hidden_states (B, text_len, Dc)
        + text_embedding_mask (B, text_len); encoder_hidden_states_t5 (B, text_len_t5, Dt5) + mask;
        image_meta_size (B, 6); style (B,); image_rotary_emb: (cos, sin) each (h*w, head_dim) for
        one frame's patch grid; inpaint_latents (B, 32, F, H, W); clip_encoder_hidden_states
        (B, tokens, clip_hidden) + clip_attention_mask (B, n_query)."""
        if inpaint_latents is not None:
            hidden_states = torch.cat([hidden_states, inpaint_latents], dim=1)
        batch, _, frames, height, width = hidden_states.shape
        p = self.patch_size
        h, w = height // p, width // p
        tokens = self.pos_embed(rearrange(hidden_states, "b c f h w -> (b f) c h w"))
        hidden_states = rearrange(tokens, "(b f) n c -> b (f n) c", b=batch)

        temb = self.time_extra_emb(
            timestep, encoder_hidden_states_t5, image_meta_size, style, hidden_dtype=timestep.dtype
        )
        text = self.embed_text(encoder_hidden_states, text_embedding_mask, encoder_hidden_states_t5, text_embedding_mask_t5)
        clip = None
        if clip_encoder_hidden_states is not None:
            clip = self.embed_clip(clip_encoder_hidden_states, clip_attention_mask)

        skips = self.skip_stack_factory()
        half = self.num_layers // 2
        for layer, block in enumerate(self.blocks):
            hidden_states = block(
                hidden_states, temb=temb, encoder_hidden_states=text, image_rotary_emb=image_rotary_emb,
                num_frames=frames, clip_encoder_hidden_states=clip, skip=skips.pop() if layer > half else None,
            )  # fmt: skip
            if layer < half - 1:
                skips.push(hidden_states)

        hidden_states = self.norm_out(hidden_states, temb.float())
        hidden_states = self.proj_out(hidden_states)
        return rearrange(
            hidden_states, "b (f h w) (p q c) -> b c f (h p) (w q)", f=frames, h=h, w=w, p=p, q=p
        )


def rotary_embedding(
    height: int, width: int, *, head_dim: int, patch_size: int = 2, base_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (h*w, head_dim), for one latent frame of ``height`` x ``width``.

    The patch grid is fitted into a ``base_size`` square (the training grid) keeping its aspect,
    as the original pipeline does; ``base_size`` is 512 px / 8 / patch_size = 32.
    """
    grid_h, grid_w = height // patch_size, width // patch_size
    if grid_h > grid_w:
        rows, cols = base_size, int(round(base_size / grid_h * grid_w))
    else:
        rows, cols = int(round(base_size / grid_w * grid_h)), base_size
    top, left = int(round((base_size - rows) / 2.0)), int(round((base_size - cols) / 2.0))
    crops = ((top, left), (top + rows, left + cols))
    cos, sin = get_2d_rotary_pos_embed(head_dim, crops, (grid_h, grid_w))
    return cos, sin
