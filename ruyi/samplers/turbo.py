"""The sampler of a step-distilled student (``finetune=distill``): deterministic DDIM on trailing
timesteps, one model call per step and no guidance.

A student distilled to ``segments`` steps learnt to land, from any timestep inside segment i of
the trailing grid (999 -> 749 -> 499 -> 249 -> clean for 4), on the point where its guided teacher
lands at the segment's end. Step counts whose timesteps keep to those boundaries work: the
segments themselves (4), a subdivision of each (8, 12, ...: every step stays inside one segment)
or whole groups of segments (2, 1: one step crosses several ends, so it is coarser). Other counts
(3, 5, 6, ...) put a step across a boundary it was never trained to cross and are refused.

Guidance is trained into the student (one forward per step is the point); ``guidance_free`` tells
the request check to refuse ``cfg > 1`` with this sampler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ruyi.errors import ConfigError
from ruyi.registry import SAMPLERS
from ruyi.samplers.schedulers import DDIMSampler

CLEAN = -1  # the "timestep" of the clean sample (alpha_bar = 1), where the last step lands
DEFAULT_SEGMENTS = 4


def trailing_timesteps(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The model's timesteps for ``steps`` steps on diffusers' "trailing" spacing (from T - 1 down,
    evenly spaced): 4 -> [999, 749, 499, 249]. The distillation trains on these boundaries."""
    grid = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
    return [int(t) for t in grid]


def segment_ends(segments: int, num_train_timesteps: int = 1000) -> list[int]:
    """The ``segments + 1`` boundaries a student of ``segments`` steps maps between, ending at :data:`CLEAN`."""
    return [*trailing_timesteps(segments, num_train_timesteps), CLEAN]


def step_counts(segments: int, upto: int = 16) -> list[int]:
    """Step counts that keep to ``segments``' boundaries, up to ``upto`` (for messages)."""
    return [n for n in range(1, upto + 1) if segments % n == 0 or n % segments == 0]


def check_steps(steps: int, segments: int) -> None:
    """Refuse a step count whose timesteps would cross a segment boundary mid-step."""
    if segments % steps == 0 or steps % segments == 0:
        return
    fits = ", ".join(str(n) for n in step_counts(segments))
    raise ConfigError(
        f"steps={steps} does not fit the {segments} segments the student was distilled to (sampler=turbo); "
        f"use {fits}, ... (a divisor or a multiple of {segments})"
    )


def check_segments(segments: Any) -> int:
    if isinstance(segments, bool) or not isinstance(segments, int) or not 1 <= segments <= 1000:
        raise ConfigError(f"sampler.segments={segments!r} must be an integer in [1, 1000] (the student's distilled steps)")
    return segments


@SAMPLERS.register("turbo")
class TurboSampler(DDIMSampler):
    """DDIM (eta 0) on trailing timesteps, ending on the clean sample, for a student of ``segments`` steps."""

    label = "Turbo"
    guidance_free: ClassVar[bool] = True

    def __init__(self, *, scheduler_config: Mapping[str, Any], segments: int = DEFAULT_SEGMENTS, **overrides: Any) -> None:
        # trailing spacing starts at t = 999 whatever the checkpoint's own spacing (the 7B's is
        # "leading"); the last step lands on alpha_bar = 1, as the student was trained to
        fixed = {"timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False}
        super().__init__(scheduler_config=scheduler_config, eta=0.0, **{**overrides, **fixed})
        self.segments = check_segments(segments)

    def __repr__(self) -> str:
        return f"TurboSampler(segments={self.segments})"

    def set_timesteps(self, steps: int, device="cpu"):
        if isinstance(steps, int) and steps >= self.min_steps:
            check_steps(steps, self.segments)
        return super().set_timesteps(steps, device=device)
