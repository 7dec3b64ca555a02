"""The denoising loop, with classifier-free guidance and per-step callbacks.

Plugins (TeaCache, Enhance-A-Video, benchmarking, a UI progress bar) attach as callbacks; the loop
itself never changes for them.

Two counts. A sampler may evaluate the model more than once per step (PNDM's Runge-Kutta
warm-up: 4 calls for each of its first 3 steps, so 25 steps are 34 calls); callbacks are told
about every call (``on_step_begin``/``on_step_end``). ``state.step`` / ``state.num_steps`` count
the user's steps (``state.step_done`` marks a step's last call): progress bars read those.
``state.call`` / ``state.num_calls`` count model evaluations: whatever changes the model's output
reads those, because the original indexes by evaluation — the CLIP window
(``clip_active(call, num_calls)``), TeaCache and Enhance-A-Video (their windows compare the
evaluation index with the user's ``num_steps``, TeaCache's starting over every ``num_steps``
evaluations, as the original's counters do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from ruyi.samplers.guidance import classifier_free_guidance
from ruyi.samplers.schedulers import DiffusersSampler


@dataclass
class DenoiseState:
    """What a callback sees. ``latents`` may be replaced in ``on_step_end``; ``stop`` ends the loop."""

    step: int  # the user's step, 0-based
    num_steps: int  # the user's steps
    timestep: torch.Tensor
    latents: torch.Tensor
    prediction: torch.Tensor | None = None
    stop: bool = False
    call: int = 0  # model evaluation index, 0-based (== step unless the sampler needs several per step)
    num_calls: int = 0  # model evaluations of the whole loop
    step_done: bool = True  # this call is the last one of its step
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class StepCallback(Protocol):
    """Any subset of these methods; missing ones are skipped."""

    def on_step_begin(self, state: DenoiseState) -> None: ...

    def on_step_end(self, state: DenoiseState) -> None: ...


ModelFn = Callable[[torch.Tensor, torch.Tensor, DenoiseState], torch.Tensor]


def _emit(callbacks: Sequence[object], event: str, state: DenoiseState) -> None:
    for cb in callbacks:
        hook = getattr(cb, event, None)
        if hook is not None:
            hook(state)


@contextmanager
def phase(callbacks: Sequence[object], name: str) -> Iterator[None]:
    """Tell callbacks that a pipeline phase (``encode``, ``denoise``, ``decode``) begins and ends
    (benchmarks time and measure the real ``__call__`` this way)."""
    for cb in callbacks:
        hook = getattr(cb, "on_phase_begin", None)
        if hook is not None:
            hook(name)
    yield
    for cb in callbacks:
        hook = getattr(cb, "on_phase_end", None)
        if hook is not None:
            hook(name)


def denoise(
    model_fn: ModelFn,
    latents: torch.Tensor,
    sampler: DiffusersSampler,
    timesteps: torch.Tensor,
    *,
    steps: int | None = None,
    guidance_scale: float = 7.0,
    generator: torch.Generator | None = None,
    callbacks: Sequence[object] = (),
    progress: bool = True,
) -> torch.Tensor:
    """Run the sampler over ``timesteps`` (``steps`` user steps) starting from ``latents (B, C, F, H, W)``.

    ``model_fn(model_input, timestep, state)`` returns the model's prediction for
    ``model_input`` (2B when guidance is on: negative branch first). Guidance is skipped at
    ``guidance_scale <= 1``.
    """
    use_cfg = guidance_scale > 1.0
    num_steps = len(timesteps) if steps is None else steps
    step_of_call = sampler.step_of_calls(num_steps, len(timesteps))
    state = DenoiseState(
        step=0, num_steps=num_steps, timestep=timesteps[0], latents=latents, num_calls=len(timesteps)
    )
    _emit(callbacks, "on_loop_begin", state)
    with tqdm(total=num_steps, desc="denoising", unit="step", disable=not progress) as bar:
        for i, t in enumerate(timesteps):
            state.call, state.step, state.timestep, state.prediction = i, step_of_call[i], t, None
            state.step_done = i + 1 == len(timesteps) or step_of_call[i + 1] != step_of_call[i]
            _emit(callbacks, "on_step_begin", state)
            model_input = torch.cat([state.latents] * 2) if use_cfg else state.latents
            model_input = sampler.scale_model_input(model_input, t)
            prediction = model_fn(model_input, t, state)
            if use_cfg:
                prediction = classifier_free_guidance(prediction, guidance_scale)
            state.prediction = prediction
            state.latents = sampler.step(prediction, t, state.latents, generator=generator)
            _emit(callbacks, "on_step_end", state)
            if state.step_done:
                bar.update()
            if state.stop:
                break
    _emit(callbacks, "on_loop_end", state)
    return state.latents
