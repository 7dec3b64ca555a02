"""``RuyiPipeline``: start frame (+ optional end frame, or keyframes anywhere, or an input video) -> video.
It only orchestrates.

Models map tensors to tensors, the sampler owns timesteps and steps, conditioning components
prepare inputs, offload strategies attach from outside. ``__call__`` reads as a numbered script;
a video longer than one segment runs the script once per segment, each continuing from the last
frames of the one before (``ruyi.conditioning.keyframes``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ruyi.conditioning.control import CameraMotionControl, ControlEmbeddings
from ruyi.conditioning.image import ImageLatents, StartEndFrames
from ruyi.conditioning.keyframes import Keyframe, Segment, kept_frames
from ruyi.conditioning.request import (  # noqa: F401  (the request's checks, re-exported for callers)
    CALL_DEFAULTS, FRAME_MULTIPLE, MAX_FRAMES, SEED_LIMIT, STRENGTH, GenerationRequest, check_frames, check_video_size,
    image_size, round_frames, validate_request,
)  # fmt: skip
from ruyi.conditioning.video import VideoReader
from ruyi.errors import ConfigError, InputError
from ruyi.io import to_frames
from ruyi.models.transformer.inputs import LatentGrid, TransformerInputs, image_meta
from ruyi.samplers.loop import DenoiseState, denoise, phase
from ruyi.samplers.schedulers import DiffusersSampler

log = logging.getLogger(__name__)


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
        start_image: Image.Image | np.ndarray | str | None = None,
        end_image: Image.Image | np.ndarray | str | None = None,
        *,
        keyframes: Sequence[Any] = (),
        video: Any = None,
        strength: float = STRENGTH,
        frames: int | None = None,
        frames_rounding: str = "error",
        base_resolution: int | None = None,
        video_size: Sequence[int] | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        seed: int = 42,
        camera: str | Sequence[str] = "auto",
        motion: str | int | Sequence[str | int] = "auto",
        segment_frames: int | None = None,
        overlap: int | None = None,
        overlap_frames: str | None = None,
        latents: torch.Tensor | None = None,
        callbacks: Sequence[object] = (),
        progress: bool = True,
        output_latents: bool = False,
        sink: Any = None,
    ) -> torch.Tensor | None:
        """``keyframes``: ``[{image: ..., frame: N}, ...]`` in output frames (``start_image`` and
        ``end_image`` are keyframes at the first and last frame); ``video``: video-to-video input
        (a path or frames), noised ``strength`` of the way; ``camera``/``motion``: one value, or one
        per segment of a video longer than ``segment_frames``, whose segments overlap by ``overlap``
        latent frames (``overlap_frames``: whose copies of them the video keeps, ``"next"`` or
        ``"previous"``). With ``sink`` each segment's kept frames (1, 3, n, H, W) go to
        ``sink(frames)`` as they are made and the call returns None (a long video never sits in
        memory whole); otherwise it returns the video."""
        callbacks = [*self.callbacks, *callbacks]
        given = dict(base_resolution=base_resolution, video_size=video_size, steps=steps, cfg=cfg,
                     segment_frames=segment_frames, overlap=overlap, overlap_frames=overlap_frames)  # fmt: skip
        chosen = {k: self.defaults[k] if v is None else v for k, v in given.items()}
        if frames is None and video is None:
            frames = self.defaults["frames"]
        # 1. check inputs
        request = self.check_inputs(
            start_image, end_image, keyframes=keyframes, video=video, strength=strength, frames=frames, seed=seed,
            camera=camera, motion=motion, frames_rounding=frames_rounding, **chosen,
        )  # fmt: skip
        segments = request.plan()
        if len(segments) > 1 and (latents is not None or output_latents):
            raise InputError("latents= and output_latents need a video of one segment; lower frames")
        reader = None
        if request.video is not None:
            reader = VideoReader(request.video, width=request.width, height=request.height)
        parts: list[torch.Tensor] = []
        tail = np.zeros((0, request.height, request.width, 3), np.uint8)  # the last frames made so far
        kept = kept_frames(segments, request.overlap_frames)
        bar = tqdm(total=len(segments), desc="segments", unit="segment", disable=not progress or len(segments) == 1)
        with bar:
            for segment, (first, end) in zip(segments, kept):
                out = self.generate_segment(request, segment, tail, reader=reader, latents=latents, callbacks=callbacks,
                                            progress=progress, output_latents=output_latents)  # fmt: skip
                if output_latents or len(segments) == 1 and sink is None:
                    return out
                if segment.index + 1 < len(segments):
                    new = out[:, :, segment.known : segment.known + segment.keep]
                    tail = np.concatenate([tail, to_frames(new)])[-segments[segment.index + 1].known :]
                if sink is not None:
                    sink(out[:, :, first:end])
                else:
                    parts.append(out[:, :, first:end])
                bar.update()
        return torch.cat(parts, dim=2) if sink is None else None

    def generate_segment(self, request: GenerationRequest, segment: Segment, tail: np.ndarray, *, reader=None,
                         latents=None, callbacks=(), progress=True, output_latents=False) -> torch.Tensor:  # fmt: skip
        """One denoising run: the segment's video (1, 3, F, H, W) (its latents with ``output_latents``).
        ``tail``: uint8 frames (n, H, W, 3) of the previous segments, the last ``segment.known`` of
        which open this one."""
        # 2. encode conditioning
        with phase(callbacks, "encode"):
            control = self.control.select(request.cameras[segment.index], request.motions[segment.index])
            keys = continued_keyframes(segment, tail)
            image = self.encode_keyframes(keys, request, frames=segment.frames)
            clean = None if reader is None else self.encode_video(reader.segment(segment.start, segment.frames))
        # 3. prepare latents
        timesteps = self.sampler.set_timesteps(request.steps, device=self.execution_device)
        generator = torch.Generator("cpu").manual_seed((request.seed + segment.index) % SEED_LIMIT)
        steps = request.steps
        if clean is None:
            latents = self.prepare_latents(request, latents, generator, frames=segment.frames)
        else:
            timesteps, steps = self.sampler.start_at(timesteps, request.steps, request.strength)
            latents = self.noise_video(clean, timesteps[0], generator)
        # 4. denoise
        with phase(callbacks, "denoise"):
            latents = denoise(
                self.model_fn(request, control, image, frames=segment.frames), latents, self.sampler, timesteps,
                steps=steps, guidance_scale=request.guidance_scale, generator=generator, callbacks=callbacks,
                progress=progress,
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

    def encode_keyframes(self, keyframes: Sequence[Keyframe], request: GenerationRequest, *, frames: int) -> ImageLatents:
        """The conditioning of a segment of ``frames`` frames that shows ``keyframes`` (segment positions).
        A start (and end) frame alone goes through ``prepare``, the original's layout, which every
        image conditioning has; other keyframes need ``prepare_keyframes``."""
        size = dict(frames=frames, height=request.height, width=request.width)
        names = [k.name for k in keyframes]
        if names == ["image"] or names == ["image", "end_image"] and keyframes[-1].frame == frames - 1:
            end = keyframes[-1].image if len(names) == 2 else None
            layout = self.image_conditioning.prepare(keyframes[0].image, end, **size)
        else:
            prepare = getattr(self.image_conditioning, "prepare_keyframes", None)
            if prepare is None:
                name = getattr(self.image_conditioning, "registry_name", type(self.image_conditioning).__name__)
                raise ConfigError(f"conditioning {name} takes a start and an end frame only; keyframes, long videos and "
                                  "video-to-video need one with prepare_keyframes (start_end_frames)")  # fmt: skip
            layout = prepare(keyframes, **size)
        return self.image_conditioning.encode(
            layout, vae=self.vae, image_encoder=self.image_encoder, device=self.execution_device, dtype=self.dtype
        )

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """video (1, 3, F, H, W) in [0, 1] -> its scaled latents (posterior mean), on the device."""
        pixels = video.to(self.execution_device, self.dtype) * 2.0 - 1.0
        return self.vae.encode(pixels)[0] * self.vae.scaling_factor

    def noise_video(self, clean: torch.Tensor, timestep: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents noised to ``timestep`` (SDEdit's start)."""
        noise = torch.randn(clean.shape, generator=generator, dtype=torch.float32)
        noisy = self.sampler.add_noise(clean.float().cpu(), noise, timestep.cpu())
        return noisy.to(self.execution_device, self.dtype)

    def latent_grid(self, request: GenerationRequest, frames: int | None = None) -> LatentGrid:
        return LatentGrid.for_models(request.frames if frames is None else frames, request.height, request.width,
                                     transformer=self.transformer, vae=self.vae)  # fmt: skip

    def latent_shape(self, request: GenerationRequest, frames: int | None = None) -> tuple[int, ...]:
        return self.latent_grid(request, frames).shape(self.vae.latent_channels)

    def prepare_latents(self, request, latents, generator, *, frames: int | None = None) -> torch.Tensor:
        shape = self.latent_shape(request, frames)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise InputError(f"latents have shape {tuple(latents.shape)}, expected {shape} for this request")
        return (latents * self.sampler.init_noise_sigma).to(self.execution_device, self.dtype)

    def model_fn(self, request: GenerationRequest, control: ControlEmbeddings, image: ImageLatents, *,
                 frames: int | None = None):  # fmt: skip
        """The transformer call of one step, with the batch laid out [negative; positive]."""
        device, dtype = self.execution_device, self.dtype
        guidance = request.guidance_scale > 1.0
        batch = 2 if guidance else 1
        grid = self.latent_grid(request, frames)
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


def continued_keyframes(segment: Segment, tail: np.ndarray) -> tuple[Keyframe, ...]:
    """A segment's keyframes: the last ``segment.known`` frames made so far at its start (a
    continuation; as made, even where a user's keyframe was: conditioning on the exact image there
    made the seam jump more on the selection images, RESULTS.md, ninth session), then the user's
    keyframes it makes."""
    known = tuple(Keyframe(frame, i, f"frame {segment.start + i}") for i, frame in enumerate(tail[len(tail) - segment.known :]))
    return (*known, *segment.keyframes) if segment.known else segment.keyframes
