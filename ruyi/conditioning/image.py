"""Start frame (and optional end frame), or keyframes anywhere -> the inputs the inpainting transformer is conditioned on.

Two stages: ``frames_from_keyframes`` builds the pixel-space video and mask (for a start and an end
frame exactly as the original does: the start frame repeated, only kept frames unmasked); ``StartEndFrames.encode`` turns them
into VAE latents (posterior mean, so runs are deterministic) and CLIP image features.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ruyi.conditioning.keyframes import Keyframe
from ruyi.errors import ConfigError, InputError
from ruyi.registry import CONDITIONINGS

log = logging.getLogger(__name__)

KEEP, GENERATE = 0.0, 255.0
# EXIF orientation tag values -> what displaying the image takes (a phone's portrait photo is
# usually stored sideways with 6 or 8)
ORIENTATION_TAG = 0x0112
ORIENTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "flipped", 5: "transposed", 6: "rotated 90° clockwise",
                7: "transversed", 8: "rotated 90° counter-clockwise"}  # fmt: skip


@dataclass(frozen=True)
class FrameConditioning:
    """Pixel-space conditioning.

    video (1, 3, F, H, W) in [0, 1]; mask (1, 1, F, H, W) with 0 = keep, 255 = generate;
    clip_image (H, W, 3) float 0..255: the resized start image; clip_pixels (B, 3, S, S), optional:
    the image encoder's own preprocessing of it, made ahead (training's DataLoader workers do this).
    """

    video: torch.Tensor
    mask: torch.Tensor
    clip_image: np.ndarray
    clip_pixels: torch.Tensor | None = None


@dataclass(frozen=True)
class ImageLatents:
    """Latent-space conditioning.

    inpaint_latents (1, 32, F', h, w): mask latents then masked-video latents, both scaled;
    clip_features (1, tokens, clip_hidden): CLIP patch features of the start image.
    """

    inpaint_latents: torch.Tensor
    clip_features: torch.Tensor

    def clip_inputs(self, *, guidance: bool, n_query: int, device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The CLIP part of the transformer's inputs while the features are on: batch [negative;
        positive] with guidance, the negative branch's features zero with mask 0 (as the original)."""
        clip = self.clip_features.to(device, dtype)
        mask = torch.ones(clip.shape[0], n_query, device=device, dtype=dtype)
        if guidance:
            clip, mask = torch.cat([torch.zeros_like(clip), clip]), torch.cat([torch.zeros_like(mask), mask])
        return {"clip_encoder_hidden_states": clip, "clip_attention_mask": mask}


# Pillow's own decompression-bomb threshold (about 89 megapixels): a larger start frame is a
# mistake (it is resized to at most 896 px anyway) or a crafted file, and decoding it could take
# gigabytes of RAM before the first step.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def load_image(image: Image.Image | np.ndarray | str | Path, *, name: str = "image") -> Image.Image:
    """A start/end image as a fully decoded 8-bit RGB PIL image.

    Paths are decoded completely (a truncated file fails here, not halfway through a run) and,
    like PIL images, turned upright by their EXIF orientation as every viewer shows them (logged);
    16-bit images are scaled to 8 bits (not clipped to white); arrays may be uint8, uint16, bool
    or float in [0, 1], shaped (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha is dropped, as
    PIL's RGB conversion does). Every problem is an :class:`InputError` naming ``name``.
    """
    if isinstance(image, (str, Path)):
        return _read_file(Path(image), name)
    if isinstance(image, np.ndarray):
        return _from_array(image, name)
    if isinstance(image, Image.Image):
        return _to_rgb8(_upright(image, name), name)
    raise InputError(f"{name} must be a file path, a PIL image or an (H, W, 3) array, not {type(image).__name__}")


def _read_file(path: Path, name: str) -> Image.Image:
    if path.is_dir():
        raise InputError(f"{name}={path} is a directory; give an image file (PNG, JPEG, WebP...)")
    if not path.exists():
        raise InputError(f"{name}={path} does not exist; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, with the size
            with Image.open(path) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise _too_large(f"{name}={path}", img.size)
                img.load()
                return _to_rgb8(_upright(img, f"{name}={path}"), f"{name}={path}")
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise _too_large(f"{name}={path}", None) from None
    except PermissionError:
        raise InputError(f"{name}={path} cannot be read (permission denied)") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{name}={path} is not an image file Pillow can read (PNG, JPEG, WebP...)") from None
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's decoders raise all three for damaged data
        raise InputError(f"{name}={path} cannot be decoded ({err}); the file is truncated or damaged") from None


def _upright(img: Image.Image, what: str) -> Image.Image:
    """The image as viewers show it: its EXIF orientation applied (and the tag dropped), said in the log."""
    try:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError):  # a damaged EXIF block: the pixels themselves are fine
        return img
    if orientation not in ORIENTATIONS:
        return img
    upright = ImageOps.exif_transpose(img)
    log.info("%s: applied its EXIF orientation (%s): %dx%d -> %dx%d", what, ORIENTATIONS[orientation], *img.size, *upright.size)
    return upright


def _too_large(what: str, size: tuple[int, int] | None) -> InputError:
    dims = f" ({size[0]} x {size[1]} pixels)" if size else ""
    return InputError(
        f"{what} is larger than {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels{dims}; downscale it "
        "(it is resized to at most 896 px anyway)"
    )


def _check_pixels(size: tuple[int, int], what: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InputError(f"{what} is empty ({width} x {height} pixels)")


def _to_rgb8(img: Image.Image, name: str) -> Image.Image:
    """8-bit RGB; 16-bit grey modes are scaled (PIL's own conversion clips them to white)."""
    _check_pixels(img.size, name)
    if img.mode in SIXTEEN_BIT_MODES:
        return _from_array(np.asarray(img).astype(np.uint16), name)
    if img.mode == "I":
        # 32-bit integer grey: older Pillow opens 16-bit PNGs this way; 8-bit data converted to "I"
        # keeps 0..255. Scale only what needs scaling.
        values = np.asarray(img)
        if values.max(initial=0) > 255:
            return _from_array(np.clip(values, 0, 65535).astype(np.uint16), name)
        return _from_array(np.clip(values, 0, 255).astype(np.uint8), name)
    if img.mode == "F":
        return _from_array(np.asarray(img), name)
    return img.convert("RGB")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        pixels = array[..., :3] if array.shape[2] != 1 else array[..., 0]
    elif array.ndim == 2:
        pixels = array
    else:
        raise InputError(f"{name} array must be (H, W, 3), (H, W, 4), (H, W, 1) or (H, W), got {array.shape}")
    _check_pixels((pixels.shape[1], pixels.shape[0]), name)
    kind = pixels.dtype.kind
    if kind == "b":
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype == np.uint16:
        pixels = np.round(pixels / 257.0).astype(np.uint8)
    elif kind in "iu" and pixels.dtype != np.uint8:
        if pixels.min() < 0 or pixels.max() > 255:
            raise InputError(
                f"{name} array of {pixels.dtype} holds {pixels.min()}..{pixels.max()}; integer images must be "
                "uint8 (0..255) or uint16 (0..65535)"
            )
        pixels = pixels.astype(np.uint8)
    elif kind == "f":
        finite = np.isfinite(pixels).all()
        if not finite or pixels.min() < 0 or pixels.max() > 1:
            held = f"{pixels.min():g}..{pixels.max():g}" if finite else "NaN or infinite values"
            raise InputError(
                f"{name} float array holds {held}; float images must lie in [0, 1] "
                "(divide 0..255 data by 255, or pass uint8)"
            )
        pixels = np.round(pixels.astype(np.float64) * 255.0).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise InputError(f"{name} array has dtype {pixels.dtype}; use uint8, uint16 or float in [0, 1]")
    image = Image.fromarray(np.ascontiguousarray(pixels))
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
    """The start image (and the end image) as keyframes at the first (and last) frame: see
    :func:`frames_from_keyframes`."""
    keyframes = [Keyframe(start_image, 0, "image")]
    if end_image is not None:
        keyframes.append(Keyframe(end_image, frames - 1, "end_image"))
    return frames_from_keyframes(keyframes, frames=frames, height=height, width=width)


def frames_from_keyframes(keyframes, *, frames: int, height: int, width: int) -> FrameConditioning:
    """Resize each keyframe's image to (width, height) with PIL's bicubic filter and lay out the
    video + mask: every keyframe's frame kept, every other frame generated (``keyframes``: sorted
    :class:`~ruyi.conditioning.keyframes.Keyframe` objects, frames inside the video, one per frame).

    The frames to generate hold the earliest keyframe's image, as the original repeats its start
    frame (the encoder masks them out anyway). With a single keyframe they are broadcast views
    (stride 0 along F), not copies: a 16-frame 288x496 layout costs one frame's work (the training
    data workers build one per clip). Treat both as read-only. The CLIP image is the earliest
    keyframe's.
    """
    images = [load_image(k.image, name=k.name).resize((width, height), Image.Resampling.BICUBIC) for k in keyframes]
    first = _as_frame(images[0]) / 255.0
    per_frame = torch.full((frames,), GENERATE)
    if len(images) == 1 and keyframes[0].frame == 0:
        video = first[:, None].expand(-1, frames, -1, -1)
    else:
        video = first[:, None].repeat(1, frames, 1, 1)
        for key, image in zip(keyframes[1:], images[1:]):
            video[:, key.frame] = _as_frame(image) / 255.0
    for key in keyframes:
        per_frame[key.frame] = KEEP
    return FrameConditioning(
        video=video[None],
        mask=per_frame[None, None, :, None, None].expand(1, 1, frames, height, width),
        clip_image=np.asarray(images[0], dtype=np.float32),
    )


@CONDITIONINGS.register("start_end_frames")
class StartEndFrames:
    """Image conditioning of Ruyi's inpainting model: start frame, optional end frame.

    ``clip_apply_ratio``: the CLIP image features are used only for the last share of the model
    evaluations (the first ``1 - clip_apply_ratio`` see zeros), as in the original. It counts
    evaluations, not steps: PNDM's warm-up evaluates the model 4 times per step, so at 4 steps
    its 13 evaluations put the switch elsewhere than 4 steps would.
    """

    def __init__(self, *, clip_apply_ratio: float = 0.4) -> None:
        if not 0.0 <= clip_apply_ratio <= 1.0:
            raise ConfigError(f"clip_apply_ratio={clip_apply_ratio} must lie in [0, 1]")
        self.clip_apply_ratio = clip_apply_ratio

    def prepare(self, start_image, end_image=None, *, frames: int, height: int, width: int) -> FrameConditioning:
        return frames_from_images(start_image, end_image, frames=frames, height=height, width=width)

    def prepare_keyframes(self, keyframes, *, frames: int, height: int, width: int) -> FrameConditioning:
        """Any keyframes (sorted, inside the video, one per frame): see :func:`frames_from_keyframes`."""
        return frames_from_keyframes(keyframes, frames=frames, height=height, width=width)

    def clip_active(self, call: int, num_calls: int) -> bool:
        """Whether model evaluation ``call`` (0-based) of the loop's ``num_calls`` sees the CLIP features."""
        return call >= num_calls * (1.0 - self.clip_apply_ratio)

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
        pixel_values = frames.clip_pixels
        if pixel_values is None:
            pixel_values = image_encoder.preprocess(frames.clip_image.astype(np.uint8))
        pixel_values = pixel_values.to(device, dtype)
        return ImageLatents(
            inpaint_latents=torch.cat([mask_latents, video_latents], dim=1),
            clip_features=image_encoder(pixel_values),
        )
