"""Conditioning: start/end frames -> latents and CLIP features; camera/motion -> text embeddings."""

from ruyi.conditioning.buckets import bucket_size, resolve_size
from ruyi.conditioning.control import CameraMotionControl, ControlEmbeddings, TextEmbeddings
from ruyi.conditioning.image import FrameConditioning, ImageLatents, StartEndFrames, frames_from_images

__all__ = [
    "CameraMotionControl",
    "ControlEmbeddings",
    "FrameConditioning",
    "ImageLatents",
    "StartEndFrames",
    "TextEmbeddings",
    "bucket_size",
    "frames_from_images",
    "resolve_size",
]
