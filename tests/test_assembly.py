"""One assembly path: specs from names and from Hydra agree, every check runs before weights load;
progress counts steps while the CLIP window counts model evaluations, as the original does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import ruyi
from ruyi.assembly import PipelineSpec, build
from ruyi.conditioning.image import StartEndFrames
from ruyi.errors import AcceleratorRequired, ConfigError, UnknownComponentError
from ruyi.io import procedural_image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOWHERE = Path("/nonexistent/checkpoint")  # a check that ran after loading would fail on this path instead


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="infer", overrides=["model=ruyi_tiny", *overrides])


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        (dict(sampler="nope"), UnknownComponentError, "unknown sampler 'nope'; valid names: ddim, dpmpp, euler"),
        (dict(offload="group"), AcceleratorRequired, "use_stream=false"),
        (dict(device="tpu"), ConfigError, "device='tpu' is not supported"),
        (dict(dtype="float8"), ConfigError, "dtype='float8' is not one of"),
        (dict(skip_steps=-1), ConfigError, "skip_steps=-1 must be an integer >= 0"),
        (dict(offload="none", offload_kwargs={"speed": 2}), ConfigError, "offload=none got options ['speed']"),
        (dict(precision="fp8_lite", precision_kwargs={"fp8_dtype": "e3m4"}), ConfigError, "fp8_dtype='e3m4'"),
    ],
)
def test_bad_combinations_fail_before_any_weight_loads(options, error, words):
    if torch.cuda.is_available() and error is AcceleratorRequired:
        pytest.skip("a GPU is present")
    with pytest.raises(error, match=None) as info:
        ruyi.load_pipeline(NOWHERE, device=options.pop("device", "cpu"), **options)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_hydra_and_names_give_the_same_spec(fixture_dir):
    from_config = PipelineSpec.from_config(
        _compose(f"model.path={fixture_dir}", "sampler=euler", "offload=model", "skip_steps=2", "device=cpu")
    )
    from_names = PipelineSpec.from_names(
        fixture_dir, sampler="euler", offload="model", skip_steps=2, device="cpu", dtype="float32"
    )
    fields = ("transformer", "vae", "image_encoder", "sampler", "image_conditioning", "control", "precision",
              "offload", "plugins", "skip_steps", "device", "dtype")  # fmt: skip
    for name in fields:
        a, b = getattr(from_config, name), getattr(from_names, name)
        if name in ("transformer", "vae", "image_encoder", "sampler"):  # by class (a model would build the 7B)
            a, b = a.cls, b.cls
        elif hasattr(a, "create"):  # same class, and built with the same settings (defaults spelled out or not)
            a, b = (a.name, vars(a.create())), (b.name, vars(b.create()))
        assert a == b, name
    assert from_config.model.path == from_names.model.path


def test_a_yaml_target_that_is_not_registered_is_refused():
    cfg = _compose("device=cpu")
    cfg.sampler._target_ = "collections.OrderedDict"
    with pytest.raises(ConfigError, match="is not a registered sampler"):
        PipelineSpec.from_config(cfg)


class StepLog:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bool]] = []

    def on_step_begin(self, state) -> None:
        self.calls.append((state.step, state.num_steps, state.step_done))


def test_pndm_progress_counts_steps_and_clip_counts_model_calls(fixture_dir):
    """PNDM evaluates the model 13 times for 4 steps (4 for each of its 3 warm-up steps, then 1).
    Callbacks and the progress count the user's 4 steps; the CLIP window counts evaluations, as
    the original's ``i < len(timesteps) * (1 - clip_apply_ratio)`` does: at ratio 0.5 evaluations
    i < 13 * 0.5 = 6.5, i.e. 0..6, see no CLIP features and 7..12 do (counting steps would
    switch at step 2, the 9th evaluation)."""
    pipe = build(PipelineSpec.from_names(fixture_dir, sampler="pndm", device="cpu", clip_apply_ratio=0.5))
    clip_on = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda _m, _args, kwargs: clip_on.append(bool(kwargs["clip_attention_mask"].any())), with_kwargs=True
    )
    log = StepLog()
    try:
        pipe(procedural_image(64, 64), frames=8, video_size=[64, 64], steps=4, callbacks=[log], progress=False,
             output_latents=True)  # fmt: skip
    finally:
        hook.remove()
    assert [c[0] for c in log.calls] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert {c[1] for c in log.calls} == {4}
    assert clip_on == [False] * 7 + [True] * 6


@pytest.mark.parametrize(
    ("ratio", "num_calls", "first_on"),
    # first_on = the smallest i with i >= num_calls * (1 - ratio), worked out by hand
    [(0.4, 13, 8), (0.4, 14, 9), (0.4, 25, 15), (0.4, 34, 21), (0.5, 13, 7), (0.0, 13, 13), (1.0, 13, 0)],
)
def test_clip_window_is_the_last_share_of_model_calls(ratio, num_calls, first_on):
    conditioning = StartEndFrames(clip_apply_ratio=ratio)
    got = [conditioning.clip_active(i, num_calls) for i in range(num_calls)]
    assert got == [False] * first_on + [True] * (num_calls - first_on)


def test_unexpected_exceptions_keep_their_traceback(fixture_dir, tmp_path, monkeypatch):
    """A bug is not a user error: the CLI lets it through (exit 1 with its traceback)."""
    from ruyi import cli

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "build", broken)
    cfg = _compose(f"model.path={fixture_dir}", f"output={tmp_path / 'v.mp4'}", "device=cpu", "frames=8",
                   "video_size=[64,64]", "steps=2")  # fmt: skip
    with pytest.raises(ZeroDivisionError):
        cli.run(cfg)
