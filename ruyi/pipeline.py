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
from ruyi.models.transformer.inputs import LatentGrid, TransformerInputs, image_meta
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


# what a call leaves out is the 7B's recommended setting, unless the preset's ``run`` block says otherwise
CALL_DEFAULTS = {"frames": 120, "base_resolution": 512, "video_size": None, "steps": 25, "cfg": 7.0}


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
    if cfg > 1 and getattr(sampler, "guidance_free", False):
        raise ConfigError(f"cfg={cfg:g} with sampler {sampler.label}: it runs a step-distilled student whose guidance "
                          "is trained in (one forward per step); pass cfg=1")  # fmt: skip
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
        defaults: dict[str, Any] | None = None,
        execution_device: torch.device | str = "cpu",
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self.image_encoder = image_encoder
        self.sampler = sampler
        self.image_conditioning = image_conditioning
        self.control = control
        self.model_path = None if model_path is None else Path(model_path)  # None: random weights
        self.dtype = dtype  # compute dtype; weights may be stored lower (FP8) by a precision strategy
        self.execution_device = torch.device(execution_device)  # where it computes; placement moves the weights there
        self.callbacks: list[object] = []  # denoising-loop callbacks that attached extensions add
        self.extensions: list[object] = []  # what ruyi.extension.attach attached, in order
        # what a call uses for the arguments it leaves out: the preset's ``run`` block (the size and
        # steps a tiny model was trained for) over the 7B's
        self.defaults = {**CALL_DEFAULTS, **{k: v for k, v in (defaults or {}).items() if k in CALL_DEFAULTS}}

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
        frames: int | None = None,
        frames_rounding: str = "error",
        base_resolution: int | None = None,
        video_size: Sequence[int] | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int = 42,
        camera: str = "auto",
        motion: str | int = "auto",
        latents: torch.Tensor | None = None,
        callbacks: Sequence[object] = (),
        progress: bool = True,
        output_latents: bool = False,
    ) -> torch.Tensor:
        callbacks = [*self.callbacks, *callbacks]
        given = dict(frames=frames, base_resolution=base_resolution, video_size=video_size, steps=steps, cfg=cfg)
        frames, base_resolution, video_size, steps, cfg = (
            self.defaults[k] if v is None else v for k, v in given.items()
        )
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

    def latent_grid(self, request: GenerationRequest) -> LatentGrid:
        return LatentGrid.for_models(request.frames, request.height, request.width,
                                     transformer=self.transformer, vae=self.vae)  # fmt: skip

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        return self.latent_grid(request).shape(self.vae.latent_channels)

    def prepare_latents(self, request, latents, generator) -> torch.Tensor:
        shape = self.latent_shape(request)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise InputError(f"latents have shape {tuple(latents.shape)}, expected {shape} for this request")
        return (latents * self.sampler.init_noise_sigma).to(self.execution_device, self.dtype)

    def model_fn(self, request: GenerationRequest, control: ControlEmbeddings, image: ImageLatents):
        """The transformer call of one step, with the batch laid out [negative; positive]."""
        device, dtype = self.execution_device, self.dtype
        guidance = request.guidance_scale > 1.0
        batch = 2 if guidance else 1
        grid = self.latent_grid(request)
        clip_on = image.clip_inputs(guidance=guidance, n_query=self.transformer.n_query, device=device, dtype=dtype)
        clip_off = {k: torch.zeros_like(v) for k, v in clip_on.items()}
        template = TransformerInputs(
            hidden_states=None, timestep=None,  # set per call
            **control.transformer_inputs(guidance=guidance, device=device, dtype=dtype),
            image_meta_size=image_meta(grid, batch, device=device, dtype=dtype),
            style=torch.zeros(batch, device=device, dtype=torch.long),
            image_rotary_emb=tuple(t.to(device) for t in grid.rotary(self.transformer.head_dim)),
            inpaint_latents=image.inpaint_latents.to(device, dtype).repeat(batch, 1, 1, 1, 1),
        )  # fmt: skip
        predicted = self.vae.latent_channels

        def call(model_input: torch.Tensor, t: torch.Tensor, state: DenoiseState) -> torch.Tensor:
            active = self.image_conditioning.clip_active(state.call, state.num_calls)
            timestep = t.reshape(1).expand(model_input.shape[0]).to(device, dtype)
            inputs = template.replace(hidden_states=model_input, timestep=timestep, **(clip_on if active else clip_off))
            # learn-sigma: the second half of the channels is the (unused) variance
            return inputs(self.transformer)[:, :predicted]

        return call

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (1, 16, F', h, w) scaled -> video (1, 3, F, H, W) in [0, 1], float32 on the CPU."""
        video = self.vae.decode(latents / self.vae.scaling_factor)
        video = video.clamp(-1, 1)
        return (video / 2 + 0.5).clamp(0, 1).float().cpu()


def image_size(image: Any, *, name: str = "image") -> tuple[int, int]:
    """(width, height) of a path, PIL image or array, decoding it completely (see ``load_image``)."""
    return load_image(image, name=name).size
