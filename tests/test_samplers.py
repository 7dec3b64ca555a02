"""Samplers, guidance and the denoising loop."""

from __future__ import annotations

import pytest
import torch

from ruyi.samplers import (
    DDIMSampler,
    EulerSampler,
    PNDMSampler,
    classifier_free_guidance,
    denoise,
    sampler_by_label,
)

CONFIG = {
    "beta_start": 0.00085, "beta_end": 0.03, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "steps_offset": 1, "clip_sample": False, "timestep_spacing": "leading",
}  # fmt: skip


def test_pndm_below_four_steps_is_a_clear_error():
    sampler = PNDMSampler(scheduler_config=CONFIG)
    with pytest.raises(ValueError, match=r"PNDM.*needs steps >= 4"):
        sampler.set_timesteps(3)
    assert len(sampler.set_timesteps(4)) > 4


def test_labels_map_to_registered_samplers():
    assert sampler_by_label("Euler") is EulerSampler and sampler_by_label("DDIM") is DDIMSampler
    with pytest.raises(KeyError, match="known: "):
        sampler_by_label("Heun")


def test_guidance_formula():
    neg, pos = torch.randn(1, 4), torch.randn(1, 4)
    out = classifier_free_guidance(torch.cat([neg, pos]), 7.0)
    assert torch.allclose(out, neg + 7.0 * (pos - neg))


class Recorder:
    def __init__(self, stop_at=None):
        self.begun, self.ended, self.stop_at = [], [], stop_at

    def on_step_begin(self, state):
        self.begun.append(state.step)

    def on_step_end(self, state):
        self.ended.append((state.step, state.prediction.shape))
        if state.step == self.stop_at:
            state.stop = True


def test_loop_batches_cfg_and_calls_callbacks():
    sampler = DDIMSampler(scheduler_config=CONFIG)
    timesteps = sampler.set_timesteps(5)
    seen = []

    def model_fn(x, t, state):
        seen.append(x.shape[0])
        return torch.zeros_like(x)

    rec = Recorder()
    out = denoise(model_fn, torch.randn(1, 2, 1, 4, 4), sampler, timesteps, guidance_scale=5.0, callbacks=[rec], progress=False)
    assert seen == [2] * 5 and rec.begun == list(range(5)) and out.shape == (1, 2, 1, 4, 4)
    assert rec.ended[0][1] == (1, 2, 1, 4, 4)
    seen.clear()
    denoise(model_fn, torch.randn(1, 2, 1, 4, 4), sampler, timesteps, guidance_scale=1.0, progress=False)
    assert seen == [1] * 5


def test_callback_can_stop_the_loop():
    sampler = EulerSampler(scheduler_config=CONFIG)
    timesteps = sampler.set_timesteps(6)
    rec = Recorder(stop_at=2)
    denoise(lambda x, t, s: torch.zeros_like(x), torch.randn(1, 1, 1, 2, 2), sampler, timesteps, callbacks=[rec], progress=False)
    assert rec.begun == [0, 1, 2]
