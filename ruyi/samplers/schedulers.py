"""The original's five samplers, as thin wrappers over diffusers schedulers.

Each is built from the checkpoint's ``scheduler/scheduler_config.json`` (a DDPM config: v-prediction,
scaled-linear betas, ``steps_offset`` 1), so the timesteps match the original exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ruyi.errors import ConfigError
from ruyi.registry import SAMPLERS


class DiffusersSampler:
    """One diffusers scheduler configured from the checkpoint.

    ``scale_model_input(latents (B, C, F, H, W), t)`` and ``step(prediction, t, latents)`` map
    directly to the scheduler; ``min_steps`` guards schedulers that break below it.
    """

    scheduler_cls: ClassVar[type[SchedulerMixin]]
    label: ClassVar[str]  # the original's name for it ("Euler A", ...)
    min_steps: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    starts_midway: ClassVar[bool] = True  # can begin at a partly noised input (video-to-video)

    def __init__(self, *, scheduler_config: Mapping[str, Any], **overrides: Any) -> None:
        config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
        self.scheduler = self.scheduler_cls.from_config({**config, **overrides})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"

    def set_timesteps(self, steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Prepare ``steps`` denoising steps and return the timesteps the model is evaluated at."""
        if not isinstance(steps, int) or steps < self.min_steps:
            raise ConfigError(
                f"sampler {self.label!r} needs steps >= {self.min_steps}, got {steps}; "
                f"raise steps or pick another sampler"
            )
        self.scheduler.set_timesteps(steps, device=device)
        return self.scheduler.timesteps

    def step_of_calls(self, steps: int, calls: int) -> list[int]:
        """The user step (0-based) of each of the ``calls`` model evaluations that ``steps`` take."""
        if calls == steps:
            return list(range(steps))
        # a scheduler evaluating the model several times per step: spread the calls evenly
        return [min(steps - 1, i * steps // calls) for i in range(calls)]

    def start_at(self, timesteps: torch.Tensor, steps: int, strength: float) -> tuple[torch.Tensor, int]:
        """The model calls left, and the user steps they make, when denoising starts ``strength``
        of the way toward the clean end (SDEdit: the last ``int(steps * strength)`` steps, at least
        one). Call right after :meth:`set_timesteps`, before :meth:`add_noise`."""
        left = max(1, min(steps, int(steps * strength + 1e-9)))
        step_of_call = self.step_of_calls(steps, len(timesteps))
        first = next(i for i, step in enumerate(step_of_call) if step >= steps - left)
        if hasattr(self.scheduler, "set_begin_index"):  # schedulers that count their own steps (sigmas)
            self.scheduler.set_begin_index(first)
        return timesteps[first:], left

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Clean ``latents`` noised to ``timestep`` as the scheduler's forward process does."""
        return self.scheduler.add_noise(latents, noise, timestep.reshape(1))

    @property
    def init_noise_sigma(self) -> float:
        return float(self.scheduler.init_noise_sigma)

    def scale_model_input(self, latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.scheduler.scale_model_input(latents, timestep)

    def step(
        self,
        prediction: torch.Tensor,
        timestep: torch.Tensor,
        latents: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        kwargs = {"generator": generator} if self.stochastic else {}
        return self.scheduler.step(prediction, timestep, latents, return_dict=False, **kwargs)[0]


@SAMPLERS.register("ddim")
class DDIMSampler(DiffusersSampler):
    scheduler_cls = DDIMScheduler
    label = "DDIM"

    def __init__(self, *, scheduler_config: Mapping[str, Any], eta: float = 0.0, **overrides: Any) -> None:
        super().__init__(scheduler_config=scheduler_config, **overrides)
        self.eta = eta
        self.stochastic = eta > 0

    def step(self, prediction, timestep, latents, *, generator=None):  # noqa: D102 - see base
        return self.scheduler.step(
            prediction, timestep, latents, eta=self.eta, generator=generator, return_dict=False
        )[0]


@SAMPLERS.register("euler")
class EulerSampler(DiffusersSampler):
    scheduler_cls = EulerDiscreteScheduler
    label = "Euler"


@SAMPLERS.register("euler_a")
class EulerAncestralSampler(DiffusersSampler):
    scheduler_cls = EulerAncestralDiscreteScheduler
    label = "Euler A"
    stochastic = True


@SAMPLERS.register("dpmpp")
class DPMPPSampler(DiffusersSampler):
    scheduler_cls = DPMSolverMultistepScheduler
    label = "DPM++"


@SAMPLERS.register("pndm")
class PNDMSampler(DiffusersSampler):
    scheduler_cls = PNDMScheduler
    label = "PNDM"
    # The original crashes below 4 steps: PNDM's Runge-Kutta warm-up needs them.
    min_steps = 4
    # its warm-up must run from the first step: it cannot begin at a partly noised video
    starts_midway = False

    def step_of_calls(self, steps: int, calls: int) -> list[int]:
        # the Runge-Kutta warm-up evaluates the model 4 times for each of its first steps
        warmup = len(self.scheduler.prk_timesteps) if self.scheduler.prk_timesteps is not None else 0
        order = 4
        return [i // order if i < warmup else warmup // order + i - warmup for i in range(calls)]


def sampler_by_label(label: str) -> type[DiffusersSampler]:
    """The registered sampler class whose original name is ``label`` (e.g. ``"Euler A"``)."""
    for name in SAMPLERS.names():
        cls = SAMPLERS.get(name)
        if getattr(cls, "label", None) == label:
            return cls
    labels = sorted(getattr(SAMPLERS.get(n), "label", n) for n in SAMPLERS.names())
    raise KeyError(f"no sampler is labelled {label!r}; known: {', '.join(labels)}")
