"""Start frame (and optional end frame) -> the inputs the inpainting transformer is conditioned on.

Two stages: ``frames_from_images`` builds the pixel-space video and mask exactly as the original
does (the start frame repeated, only kept frames unmasked); ``StartEndFrames.encode`` turns them
into VAE latents (posterior mean, so runs are deterministic) and CLIP image features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ruyi.errors import ConfigError
from ruyi.registry import CONDITIONINGS

KEEP, GENERATE = 0.0, 255.0


@dataclass(frozen=True)
class FrameConditioning:
    """Pixel-space conditioning.

    video (1, 3, F, H, W) in [0, 1]; mask (1, 1, F, H, W) with 0 = keep, 255 = generate;
    clip_image (H, W, 3) float 0..255: the resized start image.
    """

    video: torch.Tensor
    mask: torch.Tensor
    clip_image: np.ndarray


@dataclass(frozen=True)
class ImageLatents:
    """Latent-space conditioning.

    inpaint_latents (1, 32, F', h, w): mask latents then masked-video latents, both scaled;
    clip_features (1, tokens, clip_hidden): CLIP patch features of the start image.
    """

    inpaint_latents: torch.Tensor
    clip_features: torch.Tensor


def _to_rgb(image: Image.Image | np.ndarray | str | Path) -> Image.Image:
    if isinstance(image, (str, Path)):
        with Image.open(image) as img:
            return img.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _as_frame(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float 0..255."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)


def frames_from_images(
    start_image: Image.Image | np.ndarray | str,
    end_image: Image.Image | np.ndarray | str | None,
    *,
    frames: int,
    height: int,
    width: int,
) -> FrameConditioning:
    """Resize the images to (width, height) with PIL's bicubic filter and lay out the video + mask."""
    start = _to_rgb(start_image).resize((width, height), Image.Resampling.BICUBIC)
    video = _as_frame(start)[:, None].repeat(1, frames, 1, 1)
    mask = torch.full((1, frames, height, width), GENERATE)
    mask[:, 0] = KEEP
    if end_image is not None:
        end = _to_rgb(end_image).resize(start.size, Image.Resampling.BICUBIC)
        video[:, -1] = _as_frame(end)
        mask[:, -1] = KEEP
    return FrameConditioning(
        video=(video / 255.0)[None],
        mask=mask[None],
        clip_image=np.asarray(start, dtype=np.float32),
    )


@CONDITIONINGS.register("start_end_frames")
class StartEndFrames:
    """Image conditioning of Ruyi's inpainting model: start frame, optional end frame.

    ``clip_apply_ratio``: the CLIP image features are used only for the last share of the steps
    (the first ``1 - clip_apply_ratio`` see zeros), as in the original.
    """

    def __init__(self, *, clip_apply_ratio: float = 0.4) -> None:
        if not 0.0 <= clip_apply_ratio <= 1.0:
            raise ConfigError(f"clip_apply_ratio={clip_apply_ratio} must lie in [0, 1]")
        self.clip_apply_ratio = clip_apply_ratio

    def prepare(self, start_image, end_image=None, *, frames: int, height: int, width: int) -> FrameConditioning:
        return frames_from_images(start_image, end_image, frames=frames, height=height, width=width)

    def clip_active(self, step: int, num_steps: int) -> bool:
        """Whether step ``step`` (0-based) of ``num_steps`` sees the CLIP features."""
        return step >= num_steps * (1.0 - self.clip_apply_ratio)

    @torch.no_grad()
    def encode(
        self, frames: FrameConditioning, *, vae, image_encoder, device: torch.device, dtype: torch.dtype
    ) -> ImageLatents:
        """VAE-encode the mask and the masked video; CLIP-encode the start image (on ``device``)."""
        video = frames.video.to(device, dtype) * 2.0 - 1.0
        generate = (frames.mask.to(device) >= 0.5).to(dtype)
        mask_video = generate.repeat(1, 3, 1, 1, 1)
        masked_video = torch.where(mask_video > 0.5, torch.full_like(video, -1.0), video)
        mask_latents = vae.encode(mask_video)[0] * vae.scaling_factor
        video_latents = vae.encode(masked_video)[0] * vae.scaling_factor
        pixel_values = image_encoder.preprocess(frames.clip_image.astype(np.uint8)).to(device, dtype)
        return ImageLatents(
            inpaint_latents=torch.cat([mask_latents, video_latents], dim=1),
            clip_features=image_encoder(pixel_values),
        )
