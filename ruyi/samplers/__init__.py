"""Samplers own timesteps and ``step``; the guidance rule and the denoising loop live beside them."""

from ruyi.samplers.guidance import classifier_free_guidance
from ruyi.samplers.loop import DenoiseState, StepCallback, denoise
from ruyi.samplers.schedulers import (
    DDIMSampler,
    DiffusersSampler,
    DPMPPSampler,
    EulerAncestralSampler,
    EulerSampler,
    PNDMSampler,
    sampler_by_label,
)
from ruyi.samplers.turbo import TurboSampler

__all__ = [
    "DDIMSampler",
    "DPMPPSampler",
    "DenoiseState",
    "DiffusersSampler",
    "EulerAncestralSampler",
    "EulerSampler",
    "PNDMSampler",
    "StepCallback",
    "TurboSampler",
    "classifier_free_guidance",
    "denoise",
    "sampler_by_label",
]
