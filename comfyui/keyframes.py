"""The Keyframes node: images placed at frames of the video, for the sampler's optional ``keyframes`` input.

A ComfyUI IMAGE batch holds the images (load several with Load Image + Batch Images, or one per
node and chain the nodes); ``frames`` lists one 0-based frame index per image. Positions outside
the video or two images at one frame fail in the sampler before any weights load.
"""

from __future__ import annotations

import torch

from .nodes import CATEGORY, image_to_array


class Ruyi_Keyframes:
    DESCRIPTION = "Images the video must show at given frames (keyframes anywhere); feed into the sampler's keyframes input."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The keyframe images, one per frame index (an IMAGE batch)."}),
                "frames": ("STRING", {"default": "60", "tooltip": "Frame indices in the output video (0-based), "
                                                                  "comma-separated, one per image, e.g. 30, 60."}),
            },
            "optional": {
                "keyframes": ("RUYI_KEYFRAMES", {"tooltip": "Keyframes of another Keyframes node, kept beside these."}),
            },
        }  # fmt: skip

    RETURN_TYPES = ("RUYI_KEYFRAMES",)
    RETURN_NAMES = ("keyframes",)
    OUTPUT_TOOLTIPS = ("Keyframes for the sampler (and further Keyframes nodes).",)
    FUNCTION = "place"
    CATEGORY = CATEGORY

    def place(self, images, frames, keyframes=None):
        return (place_keyframes(images, frames, keyframes),)


def place_keyframes(images: torch.Tensor, frames: str, earlier=None) -> tuple[dict, ...]:
    """IMAGE batch + "30, 60" -> ({image: uint8 (H, W, 3), frame: 30}, ...) after ``earlier``'s."""
    from ruyi.errors import InputError

    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise InputError(f"images must be a ComfyUI IMAGE batch [B, H, W, C], got {getattr(images, 'shape', type(images))}")
    parts = [p.strip() for p in str(frames).split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise InputError(f"frames={frames!r} must be frame indices (0-based) separated by commas, e.g. 30, 60")
    if len(parts) != images.shape[0]:
        raise InputError(f"frames lists {len(parts)} index(es) for {images.shape[0]} image(s); give one per image")
    placed = [{"image": image_to_array(images[i : i + 1]), "frame": int(p)} for i, p in enumerate(parts)]
    return (*(earlier or ()), *placed)
