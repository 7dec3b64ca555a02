"""A batch of clips -> the transformer's inputs, built by the pipeline's own components.

The start frame (and, sometimes, the last frame; or with ``known_frames`` random known-frame masks:
a start, start and end, a continued segment's first latent frames, keyframes anywhere) goes
through ``pipe.image_conditioning`` exactly as at inference: ``prepare`` lays out frames and mask
(in the DataLoader workers, where the CPU work parallelises), ``encode`` makes the VAE latents of mask and masked video and the CLIP
features (on the training device, the whole batch at once). The clean latents are the VAE posterior mean of the whole clip, scaled as the
pipeline scales latents. Camera/motion labels select the checkpoint's control embeddings through
``pipe.control``.

Guidance needs an unconditional model: with probability ``uncond_prob`` a sample gets the
negative branch inference pairs with it (the ``n.default`` embeddings and no CLIP image). CLIP
features are used for timesteps below ``clip_apply_ratio * num_train_timesteps``. Inference uses
them for the last ``clip_apply_ratio`` share of its model calls; with 25 DDIM, Euler or DPM++
steps that is the same set of timesteps (PNDM's extra warm-up calls move the switch to t <= 481,
few steps move it by up to a step), and a training timestep belongs to no schedule.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ruyi.conditioning.image import FrameConditioning
from ruyi.conditioning.keyframes import LATENT_FRAME, Keyframe
from ruyi.errors import ConfigError
from ruyi.models.transformer.inputs import LatentGrid, TransformerInputs, image_meta

EMBEDDING_FIELDS = ("emb1", "mask1", "emb2", "mask2")


@dataclass
class EncodedClip:
    """What the frozen encoders make of a batch of clips (cacheable: no randomness of the step inside).

    x0 (B, C, F', h, w) scaled latents; inpaint (B, 2C, F', h, w); clip (B, tokens, hidden).
    """

    x0: torch.Tensor
    inpaint: torch.Tensor
    clip: torch.Tensor


class LatentCache:
    """Encoded clips on disk, one safetensors file per (clip key, conditioning variant).

    For the 7B the VAE and CLIP passes cost more than a LoRA step: encode each clip once. Writes are
    atomic, so ranks and restarts can share a cache folder.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.safetensors"

    def get(self, key: str) -> EncodedClip | None:
        path = self.path(key)
        if not path.is_file():
            return None
        t = load_file(str(path))
        return EncodedClip(x0=t["x0"], inpaint=t["inpaint"], clip=t["clip"])

    def put(self, key: str, item: EncodedClip) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(fd)
        try:
            tensors = {"x0": item.x0, "inpaint": item.inpaint, "clip": item.clip}
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


KNOWN_FRAMES = ("start", "start_end", "prefix", "keyframes")
KNOWN_USAGE = "known_frames={start: 0.3, start_end: 0.2, prefix: 0.3, keyframes: 0.2} (shares of the samples; null: end_frame_prob)"


def check_known_frames(shares: Mapping[str, float] | None) -> dict[str, float] | None:
    """``known_frames``: a share (>= 0, some > 0) per kind of known-frame mask, or None."""
    from ruyi.checks import check_number

    if shares is None:
        return None
    if not isinstance(shares, Mapping) or not shares:
        raise ConfigError(f"known_frames={shares!r} is not a mapping; {KNOWN_USAGE}")
    unknown = sorted(set(shares) - set(KNOWN_FRAMES))
    if unknown:
        raise ConfigError(f"known_frames.{unknown[0]} is not a kind of mask ({', '.join(KNOWN_FRAMES)}); {KNOWN_USAGE}")
    checked = {k: check_number(f"known_frames.{k}", v, low=0, hint="a share of the samples") for k, v in shares.items()}
    if not sum(checked.values()) > 0:
        raise ConfigError(f"known_frames gives every kind a share of 0; {KNOWN_USAGE}")
    return checked


def sample_known_frames(shares: Mapping[str, float], frames: int) -> tuple[int, ...]:
    """The frames a sample is conditioned on (sorted), drawn with torch's random numbers (seeded per
    DataLoader worker): ``start`` frame 0; ``start_end`` frames 0 and F-1; ``prefix`` the first k
    latent frames (4k frames, k in 1 .. F/4 - 1: a continued segment); ``keyframes`` frame 0 or such
    a prefix, plus 1-2 frames anywhere after it (a middle keyframe, sometimes the end)."""
    kinds = [k for k in KNOWN_FRAMES if shares.get(k, 0) > 0]
    weights = torch.tensor([float(shares[k]) for k in kinds])
    kind = kinds[int(torch.multinomial(weights, 1))]
    latent = frames // LATENT_FRAME
    if frames < 2 * LATENT_FRAME or kind == "start":
        return (0,)
    if kind == "start_end":
        return (0, frames - 1)
    head = LATENT_FRAME * int(torch.randint(1, latent, ()))
    if kind == "prefix":
        return tuple(range(head))
    if bool(torch.rand(()) < 0.5):
        head = 1
    extra = torch.randperm(frames - head)[: int(torch.randint(1, 3, ()))] + head
    return (*range(head), *sorted(int(f) for f in extra))


class ConditionedClips(Dataset):
    """A clip dataset whose items also carry the pixel-space conditioning, laid out by
    ``conditioning.prepare`` (the inference code) in the DataLoader's workers.

    Adds "cond_video" uint8 (3, F, H, W) and "cond_mask" uint8 (1, F, H, W): exactly
    ``FrameConditioning.video * 255`` and ``.mask`` (both hold whole numbers, so uint8 carries them
    losslessly at a quarter of the size), "clip_image" uint8 (H, W, 3) and "with_end" (bool): whether
    the last frame is a conditioning frame too (probability ``end_frame_prob``). With ``known_frames``
    (shares of the masks of :func:`sample_known_frames`) any frames may condition, laid out by
    ``conditioning.prepare_keyframes``; "known" then lists them ("0,7"). A clip that turns (its
    "known_prefix" frames pan another way) is conditioned on those frames. With ``pixel_values``
    (the image encoder's ``PixelValues``) also "clip_pixels" float (3, S, S): its preprocessing of
    the clip image, done here rather than once per batch in the training process.
    """

    def __init__(self, dataset: Dataset, conditioning, *, end_frame_prob: float = 0.0, pixel_values=None,
                 known_frames: Mapping[str, float] | None = None) -> None:  # fmt: skip
        self.dataset, self.conditioning, self.end_frame_prob = dataset, conditioning, float(end_frame_prob)
        self.pixel_values = pixel_values
        self.known_frames = check_known_frames(known_frames)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        frames = uint8_frames(item["video"])
        num_frames, height, width = frames.shape[:3]
        prefix = int(item.pop("known_prefix", 0))  # a turning clip's frames before the turn: they must condition
        if prefix and self.known_frames is None:
            raise ConfigError("the data turns (data.turn_prob) but known_frames is null: set known_frames, so the frames "
                              "before a turn condition the sample")  # fmt: skip
        if self.known_frames is None:
            with_end = bool(torch.rand(()) < self.end_frame_prob)
            layout = self.conditioning.prepare(
                frames[0], frames[-1] if with_end else None, frames=num_frames, height=height, width=width
            )
        else:
            known = tuple(range(prefix)) if prefix else sample_known_frames(self.known_frames, num_frames)
            with_end = num_frames - 1 in known
            keys = [Keyframe(frames[i], i, f"clip frame {i}") for i in known]
            layout = self.conditioning.prepare_keyframes(keys, frames=num_frames, height=height, width=width)
            item["known"] = ",".join(str(i) for i in known)
        item["cond_video"] = whole_numbers(layout.video[0], 255.0)
        item["cond_mask"] = whole_numbers(layout.mask[0], 1.0)
        clip_image = layout.clip_image.astype(np.uint8)
        item["clip_image"] = torch.from_numpy(clip_image)
        if self.pixel_values is not None:
            item["clip_pixels"] = self.pixel_values(clip_image)[0]
        item["with_end"] = with_end
        return item


class BatchEncoder:
    """``encode(batch)`` -> EncodedClip of the batch; ``transformer_kwargs(...)`` -> the forward's keyword args."""

    def __init__(self, pipe, *, uncond_prob: float = 0.1, cache: LatentCache | None = None) -> None:
        self.pipe = pipe
        self.uncond_prob = float(uncond_prob)
        self.cache = cache
        self._branches: dict[tuple, object] = {}

    def _branch(self, camera: str, motion, dropped: bool):
        """The checkpoint's (frozen) control embeddings of one label: positive, or the negative
        branch when the conditioning is dropped; looked up once per label."""
        key = (camera, motion, dropped)
        if key not in self._branches:
            control = self.pipe.control.select(camera, motion)
            self._branches[key] = control.negative if dropped else control.positive
        return self._branches[key]

    @torch.no_grad()
    def encode_rows(self, batch: dict, rows: list[int]) -> EncodedClip:
        """The frozen encoders on ``rows`` of the batch, in one call each, on ``pipe.execution_device``."""
        pipe = self.pipe
        device, dtype = pipe.execution_device, pipe.dtype
        pixels = batch.get("clip_pixels")
        layout = FrameConditioning(
            video=batch["cond_video"][rows].to(device).float() / 255.0,
            mask=batch["cond_mask"][rows].to(device).float(),
            clip_image=batch["clip_image"][rows].cpu().numpy().astype(np.float32),  # Lightning moved the batch
            clip_pixels=None if pixels is None else pixels[rows],
        )
        image = pipe.image_conditioning.encode(
            layout, vae=pipe.vae, image_encoder=pipe.image_encoder, device=device, dtype=dtype
        )
        # the clean clip is scaled like every other latent the pipeline makes
        pixels = (batch["video"][rows].to(device).float() / 255.0).to(dtype) * 2.0 - 1.0
        x0 = pipe.vae.encode(pixels)[0] * pipe.vae.scaling_factor
        return EncodedClip(x0=x0, inpaint=image.inpaint_latents, clip=image.clip_features)

    def encode(self, batch: dict) -> EncodedClip:
        n = len(batch["camera"])
        if self.cache is None:
            return self.encode_rows(batch, list(range(n)))
        masks = batch.get("known") or [f"end={int(e)}" for e in batch["with_end"]]
        keys = [None if k is None else f"{k}|{m}" for k, m in zip(batch["key"], masks)]
        found = {i: self.cache.get(k) for i, k in enumerate(keys) if k is not None}
        missing = [i for i in range(n) if found.get(i) is None]
        if missing:
            fresh = self.encode_rows(batch, missing)
            for j, i in enumerate(missing):
                found[i] = EncodedClip(x0=fresh.x0[j : j + 1], inpaint=fresh.inpaint[j : j + 1], clip=fresh.clip[j : j + 1])
                if keys[i] is not None:
                    self.cache.put(keys[i], found[i])
        device = self.pipe.execution_device
        return EncodedClip(
            **{f: torch.cat([getattr(found[i], f).to(device) for i in range(n)]) for f in ("x0", "inpaint", "clip")}
        )

    def transformer_kwargs(self, encoded: EncodedClip, batch: dict, timesteps: torch.Tensor, num_train_timesteps: int) -> dict:
        """The keyword arguments of ``transformer(x_t, t, **kwargs)`` for the batch."""
        pipe = self.pipe
        transformer, device, dtype = pipe.transformer, pipe.execution_device, pipe.dtype
        n = encoded.x0.shape[0]
        uncond = torch.rand(n) < self.uncond_prob
        clip_on = (timesteps.cpu() < pipe.image_conditioning.clip_apply_ratio * num_train_timesteps) & ~uncond
        # each distinct (camera, motion, dropped) once, then gathered per row
        labels = [(batch["camera"][i], batch["motion"][i], bool(uncond[i])) for i in range(n)]
        distinct = list(dict.fromkeys(labels))
        rows = torch.tensor([distinct.index(label) for label in labels], device=device)
        branches = [self._branch(*label) for label in distinct]
        # each piece moved first: finetune=control's trainable rows live on the device, the frozen ones on the CPU
        emb = {f: torch.cat([getattr(b, f).to(device) for b in branches]).index_select(0, rows) for f in EMBEDDING_FIELDS}
        on = clip_on.to(device, dtype)
        # off: zeros with mask 0, which the transformer replaces by its learned padding (as inference)
        clip = encoded.clip.to(device, dtype) * on[:, None, None]
        _, _, frames, h, w = encoded.x0.shape
        grid = LatentGrid(frames, h, w, patch_size=transformer.patch_size, spatial=pipe.vae.spatial_compression)
        return TransformerInputs(
            hidden_states=None, timestep=None,  # the caller's noisy latents and timesteps
            encoder_hidden_states=emb["emb1"].to(dtype), text_embedding_mask=emb["mask1"],
            encoder_hidden_states_t5=emb["emb2"].to(dtype), text_embedding_mask_t5=emb["mask2"],
            image_meta_size=image_meta(grid, n, device=device, dtype=dtype),
            style=torch.zeros(n, device=device, dtype=torch.long),
            image_rotary_emb=tuple(t.to(device) for t in grid.rotary(transformer.head_dim)),
            inpaint_latents=encoded.inpaint.to(device, dtype),
            clip_encoder_hidden_states=clip, clip_attention_mask=on[:, None].expand(n, transformer.n_query),
        ).kwargs()  # fmt: skip


def whole_numbers(layout: torch.Tensor, scale: float) -> torch.Tensor:
    """(C, F, H, W) float -> uint8 ``round(layout * scale)``; frames broadcast from one (stride 0
    along F, as ``frames_from_images`` lays them out) are converted once and broadcast again (the
    batch collation copies them)."""
    if layout.shape[1] > 1 and layout.stride(1) == 0:
        return whole_numbers(layout[:, :1], scale).expand_as(layout)
    return (layout * scale).round().to(torch.uint8)


def uint8_frames(video: torch.Tensor) -> np.ndarray:
    """uint8 (3, F, H, W) -> (F, H, W, 3) numpy, the layout images and decoders use."""
    return video.permute(1, 2, 3, 0).cpu().numpy()
