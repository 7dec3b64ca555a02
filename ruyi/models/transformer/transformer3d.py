"""Ruyi's 3D diffusion transformer (the checkpoint's ``HunyuanTransformer3DModel``)."""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import (
    HunyuanCombinedTimestepTextSizeStyleEmbedding,
    PatchEmbed,
    PixArtAlphaTextProjection,
    get_2d_rotary_pos_embed,
)
from diffusers.models.normalization import AdaLayerNormContinuous
from einops import rearrange
from torch import nn

from ruyi.models.base import RuyiModelMixin
from ruyi.models.transformer.block import RuyiDiTBlock
from ruyi.models.transformer.resampler import ClipResampler
from ruyi.registry import TRANSFORMERS


@TRANSFORMERS.register("ruyi_transformer3d")
class RuyiTransformer3D(RuyiModelMixin, PeftAdapterMixin):
    """HunyuanDiT-based video DiT with U-ViT long skips, a per-block time table and CLIP-image
    cross-attention, for image-to-video inpainting.

    ``forward(hidden_states (B, 16, F, H, W), timestep (B,), ...) -> (B, out_channels, F, H, W)``;
    with learn-sigma the first 16 output channels are the prediction, the rest the unused variance.

    Every U-ViT long skip passes ``skip_push`` when the first half stores it and ``skip_pop`` when
    the second half takes it back: parameter-free identities, where memory strategies hook in to
    keep those activations elsewhere (``ruyi.memory.skips``); what ``skip_push`` returns is
    only ever handed to ``skip_pop``.

    A diffusers ``ModelMixin``: ``from_pretrained``/``save_pretrained`` on the checkpoint's
    ``transformer/`` folder, ``enable_layerwise_casting``, ``enable_gradient_checkpointing``,
    ``compile_repeated_blocks`` (the blocks) and peft adapters (``add_adapter``) come from the library.
    """

    checkpoint_class_name: ClassVar[str] = "HunyuanTransformer3DModel"
    subfolder: ClassVar[str] = "transformer"
    # The original sets these on top of config.json when loading; the released weights need them.
    config_overrides: ClassVar[dict[str, Any]] = {
        "basic_block_type": "basic", "after_norm": False, "time_position_encoding": True,
    }  # fmt: skip
    _no_split_modules: ClassVar[list[str]] = ["RuyiDiTBlock"]  # device_map placement
    _repeated_blocks: ClassVar[list[str]] = ["RuyiDiTBlock"]  # compile_repeated_blocks
    _supports_gradient_checkpointing: ClassVar[bool] = True
    # these read their children's weights directly (no child forward): hooks must treat them whole
    _preload_module_classes: ClassVar[list[str]] = ["HunyuanDiTAttentionPool", "MultiheadAttention"]
    # left in the load dtype by enable_layerwise_casting: small tables and norms that lose accuracy
    _skip_layerwise_casting_patterns: ClassVar[list[str]] = [
        "pos_embed", "norm", "pooler", "t_embed", "padding", "clip_projection",
    ]  # fmt: skip

    @register_to_config
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
            raise NotImplementedError(
                f"basic_block_type={basic_block_type!r}: only 'basic' (Ruyi-Mini-7B) is implemented; "
                "motion-module and hybrid-attention blocks are not"
            )
        if after_norm:
            raise NotImplementedError("after_norm=true is not used by Ruyi-Mini-7B and is not implemented")
        if norm_type != "layer_norm":
            raise NotImplementedError(f"norm_type={norm_type!r}: only 'layer_norm' is implemented")
        if num_attention_heads * attention_head_dim != hidden_size:
            raise ValueError(
                f"hidden_size={hidden_size} must equal num_attention_heads x attention_head_dim "
                f"= {num_attention_heads * attention_head_dim}"
            )
        if num_layers % 2:
            raise ValueError(
                f"num_layers={num_layers} must be even: long skips pair block i with block num_layers-1-i"
            )
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_attention_heads, attention_head_dim
        self.patch_size, self.n_query, self.num_layers = patch_size, n_query, num_layers
        self.out_channels = out_channels
        # extra input channels beyond the (doubled, with learn-sigma) output are inpaint latents
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
                skip=layer > num_layers // 2, time_position_encoding=time_position_encoding,
                clip_attention=self.inpaint,
            )  # fmt: skip
            for layer in range(num_layers)
        )
        if self.inpaint:
            self.clip_padding = nn.Parameter(torch.randn(n_query, cross_attention_dim) * 0.02)
            self.clip_projection = ClipResampler(
                n_query, cross_attention_dim, num_heads=num_attention_heads, kv_dim=projection_dim
            )
        self.norm_out = AdaLayerNormContinuous(hidden_size, hidden_size, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.skip_push, self.skip_pop = nn.Identity(), nn.Identity()
        self.gradient_checkpointing = False  # set by enable_gradient_checkpointing()

    def embed_text(
        self, emb: torch.Tensor, mask: torch.Tensor, emb_t5: torch.Tensor, mask_t5: torch.Tensor
    ) -> torch.Tensor:
        """emb (B, text_len, Dc) + mask, emb_t5 (B, text_len_t5, Dt5) + mask
        -> (B, text_len + text_len_t5, Dc).

        Masked-out tokens are replaced by learned padding rows instead of being masked in attention.
        """
        emb_t5 = self.text_embedder(emb_t5.flatten(0, 1)).unflatten(0, emb_t5.shape[:2])
        text = torch.cat([emb, emb_t5], dim=1)
        keep = torch.cat([mask, mask_t5], dim=-1)[..., None].bool()
        return torch.where(keep, text, self.text_embedding_padding)

    def embed_clip(
        self, features: torch.Tensor | None, mask: torch.Tensor | None, batch: int
    ) -> torch.Tensor:
        """CLIP patch features (B, tokens, projection_dim) + mask (B, n_query) -> (B, n_query, Dc).

        Masked-out rows get the learned padding. No features means no image: all padding, which is
        what the original pipeline feeds in that case (zeros with mask 0).
        """
        if features is None:
            return self.clip_padding.expand(batch, -1, -1)
        clip = self.clip_projection(features)
        if mask is None:
            return clip
        return torch.where(mask[..., None].bool(), clip, self.clip_padding)

    def run_blocks(
        self,
        hidden_states: torch.Tensor,
        *,
        temb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
        num_frames: int,
        clip_encoder_hidden_states: torch.Tensor | None,
    ) -> torch.Tensor:
        """The block stack and the output norm: tokens (B, F*h*w, D) -> normalised tokens (B, F*h*w, D).

        temb (B, D); encoder_hidden_states (B, text tokens, Dc); image_rotary_emb (cos, sin), each
        (F*h*w, head_dim); clip_encoder_hidden_states (B, n_query, Dc) or None.
        """
        # U-ViT long skips: block i of the first half feeds block num_layers-1-i of the second half;
        # the two middle blocks neither push nor pop
        skips: list[Any] = []
        half = self.num_layers // 2
        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        for layer, block in enumerate(self.blocks):
            tensors = (
                hidden_states, temb, encoder_hidden_states, *image_rotary_emb, clip_encoder_hidden_states,
                self.skip_pop(skips.pop()) if layer > half else None,
            )  # fmt: skip
            if checkpointing:
                # every tensor goes in positionally, so a reentrant checkpoint function also
                # propagates gradients to them (a closure over temb or the text would not)
                hidden_states = self._gradient_checkpointing_func(partial(_call_block, block, num_frames), *tensors)
            else:
                hidden_states = _call_block(block, num_frames, *tensors)
            if layer < half - 1:
                skips.append(self.skip_push(hidden_states))
        return self.norm_out(hidden_states, temb.float())

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
        """hidden_states (B, 16, F, H, W); timestep (B,); encoder_hidden_states (B, text_len, Dc) +
        text_embedding_mask (B, text_len); encoder_hidden_states_t5 (B, text_len_t5, Dt5) +
        text_embedding_mask_t5 (B, text_len_t5); image_meta_size (B, 6); style (B,);
        image_rotary_emb (cos, sin), each (H/p * W/p, head_dim), for ONE frame's patch grid;
        inpaint_latents (B, in_channels - 16, F, H, W); clip_encoder_hidden_states
        (B, tokens, projection_dim) + clip_attention_mask (B, n_query)
        -> (B, out_channels, F, H, W)."""
        if inpaint_latents is not None:
            hidden_states = torch.cat([hidden_states, inpaint_latents], dim=1)
        batch, _, frames, height, width = hidden_states.shape
        p = self.patch_size

        # tokens frame-major: (B, F*h*w, D), each frame patchified like an image
        frames_as_images = hidden_states.transpose(1, 2).flatten(0, 1)
        hidden_states = self.pos_embed(frames_as_images).unflatten(0, (batch, frames)).flatten(1, 2)
        temb = self.time_extra_emb(
            timestep, encoder_hidden_states_t5, image_meta_size, style, hidden_dtype=timestep.dtype
        )
        text = self.embed_text(
            encoder_hidden_states, text_embedding_mask, encoder_hidden_states_t5, text_embedding_mask_t5
        )
        clip = None
        if self.inpaint:
            clip = self.embed_clip(clip_encoder_hidden_states, clip_attention_mask, batch)
        rotary = tuple(t.repeat(frames, 1) for t in image_rotary_emb)  # same 2D table for every frame

        blocks_kwargs = dict(
            temb=temb, encoder_hidden_states=text, image_rotary_emb=rotary, num_frames=frames,
            clip_encoder_hidden_states=clip,
        )  # fmt: skip
        hidden_states = self.run_blocks(hidden_states, **blocks_kwargs)
        hidden_states = self.proj_out(hidden_states)
        grid = dict(f=frames, h=height // p, w=width // p, p=p, q=p)
        return rearrange(hidden_states, "b (f h w) (p q c) -> b c f (h p) (w q)", **grid)


def _call_block(
    block: RuyiDiTBlock,
    num_frames: int,
    hidden_states: torch.Tensor,
    temb: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    rotary_cos: torch.Tensor,
    rotary_sin: torch.Tensor,
    clip_encoder_hidden_states: torch.Tensor | None,
    skip: torch.Tensor | None,
) -> torch.Tensor:
    """A block's keyword-only forward with positional tensors (the checkpoint function's calling convention)."""
    return block(
        hidden_states, temb=temb, encoder_hidden_states=encoder_hidden_states,
        image_rotary_emb=(rotary_cos, rotary_sin), num_frames=num_frames,
        clip_encoder_hidden_states=clip_encoder_hidden_states, skip=skip,
    )  # fmt: skip


def rotary_embedding(
    height: int, width: int, *, head_dim: int, patch_size: int = 2, base_size: int = 512 // 8 // 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (height/p * width/p, head_dim), for one latent frame of ``height`` x ``width``.

    As the original pipeline does, the patch grid is fitted into the ``base_size`` square grid
    (512 px / 8 / patch 2 = 32) keeping its aspect ratio and centred; the rotary positions are
    that crop region sampled at the actual grid size.
    """
    rows, cols = height // patch_size, width // patch_size
    if rows > cols:
        fit_rows, fit_cols = base_size, int(round(base_size / rows * cols))
    else:
        fit_rows, fit_cols = int(round(base_size / cols * rows)), base_size
    top, left = int(round((base_size - fit_rows) / 2.0)), int(round((base_size - fit_cols) / 2.0))
    region = ((top, left), (top + fit_rows, left + fit_cols))
    cos, sin = get_2d_rotary_pos_embed(head_dim, region, (rows, cols), output_type="pt")
    return cos, sin
