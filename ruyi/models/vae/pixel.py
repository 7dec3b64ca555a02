"""A fixed, parameter-free pixel-space "VAE" for tiny models that must carry a real picture.

The tiny random MagViT cannot reconstruct anything, so a tiny transformer trained on its latents
learns noise. ``PixelPatchVAE`` instead projects each latent cell's pixels (4 frames x 8 x 8 px x
3 colours = 768 values) onto 16 fixed orthonormal patterns, then normalises every channel to zero
mean and unit variance (a diffusion model learns once its latents have unit variance):

- channels 0-11: the mean colour of the 8 x 8 block, per colour and per frame (a 1/8-scale
  thumbnail of each of the 4 frames, so motion survives frame by frame);
- channels 12-15: luminance left-minus-right and top-minus-bottom contrast of the block, for frames
  0-1 and for frames 2-3 (a little detail below the block size).

What is exact: ``encode(decode(z)) == z`` for every latent ``z``, and ``decode(encode(x))`` is the
orthogonal projection of ``x`` onto the videos these patterns span (blocky 1/8-scale frames). It is
lossy like any 48x compression, but deterministic, cheap and free of training.

The shapes follow MagViT's rules, so the pipeline needs nothing special: 8x spatial, 4x temporal
compression, 16 latent channels; a single frame (F = 1) is one latent frame (encoded as four equal
frames), and one latent frame always decodes to one frame (the mean of its four), as with MagViT.
So ``encode(decode(z)) == z`` holds for videos (F' >= 2) and for image latents.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from diffusers.configuration_utils import register_to_config

from ruyi.models.base import RuyiModelMixin
from ruyi.models.vae.output import HostOutputMixin
from ruyi.registry import VAES

BLOCK, FRAMES, COLOURS = 8, 4, 3
CHANNELS = 16
DETERMINISTIC_LOGVAR = -30.0  # the floor MagViT's posterior clamps to: no sampling noise


@functools.cache
def patch_basis() -> torch.Tensor:
    """(768, 16) orthonormal columns over a cell flattened as (colour, frame, y, x). Built once (a
    shared constant: callers never write to it)."""
    basis = torch.zeros(COLOURS, FRAMES, BLOCK, BLOCK, CHANNELS)
    for c in range(COLOURS):
        for f in range(FRAMES):
            basis[c, f, :, :, c * FRAMES + f] = 1.0 / BLOCK
    half = BLOCK // 2
    sign = torch.cat([torch.ones(half), -torch.ones(half)])
    horizontal, vertical = sign[None, :].expand(BLOCK, BLOCK), sign[:, None].expand(BLOCK, BLOCK)
    norm = math.sqrt(COLOURS * 2 * BLOCK * BLOCK)
    for pair, frames in enumerate(((0, 1), (2, 3))):
        for k, pattern in enumerate((horizontal, vertical)):
            for f in frames:
                basis[:, f, :, :, 12 + 2 * pair + k] = pattern / norm
    return basis.reshape(-1, CHANNELS)


@VAES.register("pixel_patch")
class PixelPatchVAE(HostOutputMixin, RuyiModelMixin):
    """``encode(video (B, 3, F, H, W) in [-1, 1]) -> (latents, logvar)`` each ``(B, 16, F', H/8, W/8)``
    with F' = F / 4 (F = 1 -> 1); ``decode(latents (B, 16, F', h, w)) -> video (B, 3, F, 8h, 8w)``.

    ``latent_mean`` / ``latent_std`` (16 numbers each, measured on the training data with
    :func:`latent_statistics` when a checkpoint is made) set ``latents = (coefficients - mean) / std``,
    so the pipeline's ``scaling_factor`` multiply is 1. They are also buffers saved in the weights,
    which the strict loader checks like any other tensor. A diffusers ``ModelMixin`` like MagViT:
    ``from_pretrained``/``save_pretrained`` on a checkpoint's ``vae/`` folder.

    ``enable_host_output()``: ``decode`` returns the video in host memory (decoded in one piece,
    it moves there whole).
    """

    checkpoint_class_name = "PixelPatchVAE"
    subfolder = "vae"
    spatial_compression = BLOCK
    temporal_compression = FRAMES

    @register_to_config
    def __init__(
        self,
        *,
        latent_mean: Sequence[float] | None = None,
        latent_std: Sequence[float] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if in_channels != COLOURS or out_channels != COLOURS:
            raise ValueError(f"PixelPatchVAE codes RGB video: in_channels and out_channels must be 3, got {in_channels}, {out_channels}")
        mean = [0.0] * CHANNELS if latent_mean is None else [float(x) for x in latent_mean]
        std = [1.0] * CHANNELS if latent_std is None else [float(x) for x in latent_std]
        if len(mean) != CHANNELS or len(std) != CHANNELS or min(std) <= 0:
            raise ValueError(f"latent_mean and latent_std must be {CHANNELS} numbers each, every std > 0")
        self.scaling_factor = float(scaling_factor)
        self.latent_channels = CHANNELS
        self.register_buffer("coeff_mean", torch.tensor(mean))
        self.register_buffer("coeff_std", torch.tensor(std))
        self.tiling = None

    # The codec works cell by cell, so spatial tiles would give identical results: tiling options
    # are accepted (callers such as vae_tile_size=N need not know the VAE) and change nothing.
    def enable_tiling(self, tile_sample_size: int = 512, tile_overlap: int = 96) -> None:
        self.tiling = (tile_sample_size, tile_overlap)

    def disable_tiling(self) -> None:
        self.tiling = None

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # 16 numbers: fetched per call, so no offload strategy has anything to place
        view = (1, CHANNELS, 1, 1, 1)
        return self.coeff_mean.to(device, torch.float32).view(view), self.coeff_std.to(device, torch.float32).view(view)

    def coefficients(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 3, F, H, W) -> raw pattern coefficients (B, 16, F', h, w), float32."""
        b, c, frames, height, width = video.shape
        if c != COLOURS:
            raise ValueError(f"expected an RGB video (B, 3, F, H, W), got {tuple(video.shape)}")
        if height % BLOCK or width % BLOCK:
            raise ValueError(f"video height and width must be multiples of {BLOCK}, got {height} x {width}")
        if frames == 1:
            video = video.expand(-1, -1, FRAMES, -1, -1)
        elif frames % FRAMES:
            raise ValueError(f"frames must be 1 or a multiple of {FRAMES}, got {frames}")
        t, h, w = video.shape[2] // FRAMES, height // BLOCK, width // BLOCK
        cells = video.float().reshape(b, COLOURS, t, FRAMES, h, BLOCK, w, BLOCK)
        cells = cells.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t, h, w, -1)
        with torch.autocast(video.device.type, enabled=False):  # exact in float32, even under bf16 training
            coeff = cells @ patch_basis().to(video.device)
        return coeff.permute(0, 4, 1, 2, 3)

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self._stats(video.device)
        latents = ((self.coefficients(video) - mean) / std).to(video.dtype)
        return latents, torch.full_like(latents, DETERMINISTIC_LOGVAR)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents.device)
        b, _, t, h, w = latents.shape
        coeff = (latents.float() * std + mean).permute(0, 2, 3, 4, 1)
        with torch.autocast(latents.device.type, enabled=False):
            cells = (coeff @ patch_basis().to(latents.device).T).reshape(b, t, h, w, COLOURS, FRAMES, BLOCK, BLOCK)
        video = cells.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, COLOURS, t * FRAMES, h * BLOCK, w * BLOCK)
        if t == 1:  # one latent frame is an image, as with MagViT
            video = video.mean(dim=2, keepdim=True)
        return self._to_output(video.to(latents.dtype))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Encode then decode (the projection onto what the codec can represent)."""
        return self.decode(self.encode(video)[0])


@torch.no_grad()
def latent_statistics(videos: Sequence[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the raw coefficients of ``videos`` (each (B, 3, F, H, W) in
    [-1, 1]), rounded to 4 digits: the ``latent_mean`` / ``latent_std`` of a checkpoint's config."""
    coder = PixelPatchVAE()
    coeff = torch.cat([coder.coefficients(v).transpose(0, 1).flatten(1) for v in videos], dim=1)
    return [round(float(x), 4) for x in coeff.mean(1)], [round(float(x), 4) for x in coeff.std(1)]
