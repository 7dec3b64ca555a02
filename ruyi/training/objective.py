"""The training objective of the checkpoint's own parameterisation.

Ruyi-Mini-7B ships a ``DDPMScheduler`` config with ``prediction_type: v_prediction`` (scaled-linear
betas 0.00085 -> 0.03, 1000 steps). EasyAnimate-V4, whose transformer the original shares, trains
it by noising the clean latents with ``add_noise`` and regressing the velocity
``get_velocity(x0, noise, t)`` with an MSE on the first ``latent_channels`` output channels (the
rest are the learned-sigma half, which no sampler reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ruyi.errors import CheckpointError, ConfigError

TARGETS = ("v_prediction", "epsilon", "sample")


def check_timestep_shift(shift: float) -> float:
    """``shift`` as a float, or a ConfigError when it is not > 0 (1 = uniform timesteps)."""
    if not float(shift) > 0:
        raise ConfigError(f"timestep_shift={shift} must be > 0 (1 = uniform timesteps)")
    return float(shift)


class DiffusionObjective:
    """Noise, target and loss from a checkpoint's ``scheduler_config.json`` (a diffusers DDPM config).

    ``sample_timesteps(n)`` -> (n,) long in [0, num_train_timesteps); ``noisy_and_target(x0, noise, t)``
    -> (x_t, target) shaped like x0; ``loss(prediction, target)`` -> scalar float32 MSE over the
    first ``target.shape[1]`` prediction channels.
    """

    def __init__(self, scheduler_config: Mapping[str, Any], *, timestep_shift: float = 1.0) -> None:
        from diffusers import DDPMScheduler

        self.timestep_shift = check_timestep_shift(timestep_shift)

        config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        self.scheduler = DDPMScheduler.from_config(config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in TARGETS:
            raise CheckpointError(f"scheduler prediction_type={self.prediction_type!r} is not one of {', '.join(TARGETS)}")
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)

    def sample_timesteps(self, n: int, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps: uniform (``timestep_shift`` 1, as EasyAnimate samples them), or moved
        toward the noisy end by the time shift of SD3 (u ~ U(0, 1) -> s u / (1 + (s - 1) u)): with
        s = 3 a third of the samples fall in the last 15 % of the schedule, where the picture is
        gone and only the conditioning (the camera label) can say what the clip does."""
        if self.timestep_shift == 1.0:
            return torch.randint(0, self.num_train_timesteps, (n,), generator=generator).to(device)
        u, s = torch.rand(n, generator=generator, dtype=torch.float64), self.timestep_shift
        shifted = s * u / (1.0 + (s - 1.0) * u)
        return (shifted * self.num_train_timesteps).long().clamp_(0, self.num_train_timesteps - 1).to(device)

    def noisy_and_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0, noise (B, C, F, h, w) float32, t (B,) long -> (x_t, the regression target)."""
        noisy = self.scheduler.add_noise(x0, noise, t)
        if self.prediction_type == "v_prediction":
            return noisy, self.scheduler.get_velocity(x0, noise, t)
        return noisy, (noise if self.prediction_type == "epsilon" else x0)

    @staticmethod
    def loss(prediction: torch.Tensor, target: torch.Tensor, *, per_sample: bool = False) -> torch.Tensor:
        """MSE on the predicted half: prediction (B, 2C or C, ...) vs target (B, C, ...) -> a scalar,
        or (B,) with ``per_sample``."""
        per_clip = (prediction[:, : target.shape[1]].float() - target.float()).pow(2).flatten(1).mean(1)
        return per_clip if per_sample else per_clip.mean()  # every clip has as many elements: the batch MSE
