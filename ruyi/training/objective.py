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
import torch.nn.functional as F

from ruyi.errors import CheckpointError

TARGETS = ("v_prediction", "epsilon", "sample")


class DiffusionObjective:
    """Noise, target and loss from a checkpoint's ``scheduler_config.json`` (a diffusers DDPM config).

    ``sample_timesteps(n)`` -> (n,) long in [0, num_train_timesteps); ``noisy_and_target(x0, noise, t)``
    -> (x_t, target) shaped like x0; ``loss(prediction, target)`` -> scalar float32 MSE over the
    first ``target.shape[1]`` prediction channels.
    """

    def __init__(self, scheduler_config: Mapping[str, Any]) -> None:
        from diffusers import DDPMScheduler

        config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
        self.scheduler = DDPMScheduler.from_config(config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in TARGETS:
            raise CheckpointError(f"scheduler prediction_type={self.prediction_type!r} is not one of {', '.join(TARGETS)}")
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)

    def sample_timesteps(self, n: int, *, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform training timesteps, as EasyAnimate samples them."""
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator).to(device)

    def noisy_and_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x0, noise (B, C, F, h, w) float32, t (B,) long -> (x_t, the regression target)."""
        noisy = self.scheduler.add_noise(x0, noise, t)
        if self.prediction_type == "v_prediction":
            return noisy, self.scheduler.get_velocity(x0, noise, t)
        return noisy, (noise if self.prediction_type == "epsilon" else x0)

    @staticmethod
    def loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE on the predicted half: prediction (B, 2C or C, ...) vs target (B, C, ...)."""
        return F.mse_loss(prediction[:, : target.shape[1]].float(), target.float())
