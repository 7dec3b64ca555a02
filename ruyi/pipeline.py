"""``RuyiPipeline``: start frame (+ optional end frame) -> video. It only orchestrates.

Models map tensors to tensors, the sampler owns timesteps and steps, conditioning components
prepare inputs, offload strategies attach from outside. ``__call__`` reads as a numbered script.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ruyi.checks import check_int, check_number
from ruyi.conditioning.buckets import MAX_RESOLUTION, MIN_RESOLUTION, resolve_size
from ruyi.conditioning.control import CameraMotionControl, ControlEmbeddings
from ruyi.conditioning.image import ImageLatents, StartEndFrames, load_image
from ruyi.errors import ConfigError, InputError
from ruyi.samplers.loop import DenoiseState, denoise, phase
from ruyi.samplers.schedulers import DiffusersSampler

log = logging.getLogger(__name__)

MAX_FRAMES = 120
FRAME_MULTIPLE = 8  # the VAE encodes 8 frames at a time
FRAMES_ROUNDING = ("error", "down")
MAX_STEPS = 1000  # the schedulers' training timesteps: diffusers refuses more inference steps
MAX_CFG = 20.0  # the ComfyUI sampler's range; the original uses 7, larger scales only burn the video
SEED_LIMIT = 2**64  # torch generators take 64-bit seeds
# one latent patch (VAE 8x, patch 2) at least; at most twice the largest bucket side at 512
MIN_SIDE, MAX_SIDE = 16, 2048
ORIGINAL_SIZE = (1024, 1024)  # the add-time-ids' "original size", fixed in the original
ROTARY_BASE = 512  # rotary grid base size in pixels, as trained


@dataclass(frozen=True)
class GenerationRequest:
    """Validated arguments of one call (checked before any model runs)."""

    frames: int
    height: int
    width: int
    steps: int
    guidance_scale: float
    seed: int
    camera: str
    motion: str


def validate_request(
    start_image, end_image=None, *, control: CameraMotionControl, sampler, frames, base_resolution, video_size, steps, cfg, seed,
    camera, motion, frames_rounding: str = "error",
) -> GenerationRequest:
    """Check every argument of a call before any model runs; ``sampler`` may be a class or instance.

    Numbers may be Python or numpy scalars; they must be finite and in range (``cfg=inf`` or a
    NaN would otherwise give a video of noise and exit 0). Images are decoded completely here, so a
    damaged file fails before the weights load.
    """
    frames = round_frames(frames, frames_rounding)
    control.check_choice(camera, motion)
    least = max(1, sampler.min_steps)
    steps = check_int("steps", steps, low=least, high=MAX_STEPS,
                      hint=f"sampler {sampler.label} needs at least {least}; the original uses 25")  # fmt: skip
    cfg = check_number("cfg", cfg, low=0, high=MAX_CFG, hint="1 disables guidance; the original uses 7.0")
    seed = check_int("seed", seed, low=0, high=SEED_LIMIT - 1, hint="below 2**64")
    base_resolution = check_int("base_resolution", base_resolution, low=MIN_RESOLUTION, high=MAX_RESOLUTION,
                                hint="512 or 768 are the trained ones")  # fmt: skip
    video_size = check_video_size(video_size)
    if start_image is None:
        raise InputError("a start image is required (image=path/to/start.png)")
    height, width = resolve_size(image_size(start_image), base_resolution, video_size)
    if end_image is not None:
        image_size(end_image, name="end_image")
    return GenerationRequest(
        frames=frames, height=height, width=width, steps=steps, guidance_scale=cfg,
        seed=seed, camera=str(camera), motion=str(motion),
    )  # fmt: skip


def check_frames(frames: int) -> int:
    frames = check_int("frames", frames, hint=f"1 or a multiple of {FRAME_MULTIPLE} up to {MAX_FRAMES}")
    if not (frames == 1 or (frames % FRAME_MULTIPLE == 0 and 0 < frames <= MAX_FRAMES)):
        raise ConfigError(
            f"frames={frames!r} is invalid; use 1 or a multiple of {FRAME_MULTIPLE} up to {MAX_FRAMES} "
            "(24 fps: 120 frames = 5 s), or frames_rounding=down"
        )
    return frames


def round_frames(frames: int, rounding: str = "error") -> int:
    """``frames`` checked; with ``rounding="down"`` first floored to a multiple of 8 as the original
    does (its VAE encodes 8 frames at a time), with a warning."""
    if rounding not in FRAMES_ROUNDING:
        raise ConfigError(f"frames_rounding={rounding!r} is not one of {', '.join(FRAMES_ROUNDING)}")
    frames = check_int("frames", frames, hint=f"1 or a multiple of {FRAME_MULTIPLE} up to {MAX_FRAMES}")
    if rounding == "down" and frames > FRAME_MULTIPLE and frames % FRAME_MULTIPLE:
        rounded = frames // FRAME_MULTIPLE * FRAME_MULTIPLE
        log.warning("frames=%d is not a multiple of %d: rounded down to %d (frames_rounding=down)",
                    frames, FRAME_MULTIPLE, rounded)  # fmt: skip
        frames = rounded
    return check_frames(frames)


def check_video_size(video_size: Sequence[int] | None) -> tuple[int, int] | None:
    """``[height, width]`` as two Python ints in [MIN_SIDE, MAX_SIDE] (multiples of 16 are checked
    with the buckets), or None."""
    if video_size is None:
        return None
    usage = f"give [height, width] as multiples of 16 between {MIN_SIDE} and {MAX_SIDE}, e.g. [384, 672]"
    if isinstance(video_size, (str, bytes)) or not isinstance(video_size, (Sequence, np.ndarray)):
        raise ConfigError(f"video_size={video_size!r} is invalid; {usage}")
    if len(video_size) != 2:
        raise ConfigError(f"video_size={list(video_size)} is invalid; {usage}")
    sides = tuple(check_int("video_size", side, low=MIN_SIDE, high=MAX_SIDE, hint=usage) for side in video_size)
    return sides  # type: ignore[return-value]


class RuyiPipeline:
    """The image-to-video pipeline of Ruyi-Mini-7B.

    ``pipe(start_image, end_image=None, frames=..., ...) -> video (1, 3, F, H, W)`` in [0, 1].
    """

    def __init__(
        self,
        *,
        transformer: torch.nn.Module,
        vae: torch.nn.Module,
        image_encoder: torch.nn.Module,
        sampler: DiffusersSampler,
        image_conditioning: StartEndFrames,
        control: CameraMotionControl,
        dtype: torch.dtype = torch.float32,
        model_path: str | Path | None = None,
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.image_encoder = image_encoder
        self.sampler = sampler
        self.image_conditioning = image_conditioning
        self.control = control
        self.model_path = None if model_path is None else Path(model_path)  # None: random weights
        self.dtype = dtype  # compute dtype; weights may be stored lower (FP8) by a precision strategy
        self.execution_device = torch.device("cpu")  # offload strategies set this
        self.callbacks: list[object] = []  # denoising-loop callbacks that attached extensions add

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        """The pipeline's models in execution order (offload strategies walk this)."""
        return {"image_encoder": self.image_encoder, "transformer": self.transformer, "vae": self.vae}

    # -- the call ----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        start_image: Image.Image | np.ndarray | str,
        end_image: Image.Image | np.ndarray | str | None = None,
        *,
        frames: int = 120,
        frames_rounding: str = "error",
        base_resolution: int = 512,
        video_size: Sequence[int] | None = None,
        steps: int = 25,
        cfg: float = 7.0,
        seed: int = 42,
        camera: str = "auto",
        motion: str | int = "auto",
        latents: torch.Tensor | None = None,
        callbacks: Sequence[object] = (),
        progress: bool = True,
        output_latents: bool = False,
    ) -> torch.Tensor:
        callbacks = [*self.callbacks, *callbacks]
        # 1. check inputs
        request = self.check_inputs(
            start_image, end_image, frames=frames, base_resolution=base_resolution, video_size=video_size,
            steps=steps, cfg=cfg, seed=seed, camera=camera, motion=motion, frames_rounding=frames_rounding,
        )  # fmt: skip
        # 2. encode conditioning
        with phase(callbacks, "encode"):
            control = self.control.select(request.camera, request.motion)
            image = self.encode_images(start_image, end_image, request)
        # 3. prepare latents
        timesteps = self.sampler.set_timesteps(request.steps, device=self.execution_device)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        latents = self.prepare_latents(request, latents, generator)
        # 4. denoise
        with phase(callbacks, "denoise"):
            latents = denoise(
                self.model_fn(request, control, image), latents, self.sampler, timesteps, steps=request.steps,
                guidance_scale=request.guidance_scale, generator=generator, callbacks=callbacks, progress=progress,
            )  # fmt: skip
        if output_latents:
            return latents
        # 5. decode
        with phase(callbacks, "decode"):
            return self.decode(latents)

    def check_inputs(self, start_image, end_image=None, **kwargs) -> GenerationRequest:
        return validate_request(start_image, end_image, control=self.control, sampler=self.sampler, **kwargs)

    def encode_images(self, start_image, end_image, request: GenerationRequest) -> ImageLatents:
        frames = self.image_conditioning.prepare(
            start_image, end_image, frames=request.frames, height=request.height, width=request.width
        )
        return self.image_conditioning.encode(
            frames, vae=self.vae, image_encoder=self.image_encoder, device=self.execution_device, dtype=self.dtype
        )

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        vae = self.vae
        latent_frames = 1 if request.frames == 1 else request.frames // vae.temporal_compression
        s = vae.spatial_compression
        return (1, vae.latent_channels, latent_frames, request.height // s, request.width // s)

    def prepare_latents(self, request, latents, generator) -> torch.Tensor:
        shape = self.latent_shape(request)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise InputError(f"latents have shape {tuple(latents.shape)}, expected {shape} for this request")
        return (latents * self.sampler.init_noise_sigma).to(self.execution_device, self.dtype)

    def model_fn(self, request: GenerationRequest, control: ControlEmbeddings, image: ImageLatents):
        """The transformer call of one step, with the batch laid out [negative; positive]."""
        from ruyi.models.transformer import rotary_embedding

        device, dtype = self.execution_device, self.dtype
        use_cfg = request.guidance_scale > 1.0
        cfg_batch = 2 if use_cfg else 1

        def branches(*pairs: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
            out = []
            for negative, positive in pairs:
                t = torch.cat([negative, positive]) if use_cfg else positive
                out.append(t.to(device))
            return out

        pos, neg = control.positive, control.negative
        emb1, mask1, emb2, mask2 = branches(
            (neg.emb1, pos.emb1), (neg.mask1, pos.mask1), (neg.emb2, pos.emb2), (neg.mask2, pos.mask2)
        )
        emb1, emb2 = emb1.to(dtype), emb2.to(dtype)
        clip = image.clip_features.to(device, dtype)
        n_query = self.transformer.n_query
        clip_on = torch.cat([torch.zeros_like(clip), clip]) if use_cfg else clip
        clip_mask_on = torch.ones(cfg_batch, n_query, device=device, dtype=dtype)
        if use_cfg:
            clip_mask_on[0] = 0
        clip_off, clip_mask_off = torch.zeros_like(clip_on), torch.zeros_like(clip_mask_on)
        inpaint = image.inpaint_latents.to(device, dtype).repeat(cfg_batch, 1, 1, 1, 1)
        meta = torch.tensor([[*ORIGINAL_SIZE, request.height, request.width, 0, 0]], device=device, dtype=dtype)
        meta = meta.repeat(cfg_batch, 1)
        style = torch.zeros(cfg_batch, device=device, dtype=torch.long)
        s = self.vae.spatial_compression
        cos, sin = rotary_embedding(
            request.height // s, request.width // s, head_dim=self.transformer.head_dim,
            patch_size=self.transformer.patch_size, base_size=ROTARY_BASE // s // self.transformer.patch_size,
        )  # fmt: skip
        rotary = (cos.to(device), sin.to(device))
        predicted = self.vae.latent_channels

        def call(model_input: torch.Tensor, t: torch.Tensor, state: DenoiseState) -> torch.Tensor:
            active = self.image_conditioning.clip_active(state.call, state.num_calls)
            timestep = t.reshape(1).expand(model_input.shape[0]).to(device, dtype)
            out = self.transformer(
                model_input, timestep,
                encoder_hidden_states=emb1, text_embedding_mask=mask1,
                encoder_hidden_states_t5=emb2, text_embedding_mask_t5=mask2,
                image_meta_size=meta, style=style, image_rotary_emb=rotary, inpaint_latents=inpaint,
                clip_encoder_hidden_states=clip_on if active else clip_off,
                clip_attention_mask=clip_mask_on if active else clip_mask_off,
            )  # fmt: skip
            # learn-sigma: the second half of the channels is the (unused) variance
            return out[:, :predicted]

        return call

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (1, 16, F', h, w) scaled -> video (1, 3, F, H, W) in [0, 1], float32 on the CPU."""
        video = self.vae.decode(latents / self.vae.scaling_factor)
        video = video.clamp(-1, 1)
        return (video / 2 + 0.5).clamp(0, 1).float().cpu()


def image_size(image: Any, *, name: str = "image") -> tuple[int, int]:
    """(width, height) of a path, PIL image or array, decoding it completely (see ``load_image``)."""
    return load_image(image, name=name).size
