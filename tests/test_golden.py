"""Parity with the original implementation, driven by the fixture's golden.json.

Every case is checked by the handler of its ``kind``; a kind without a handler fails. Point
``RUYI_FIXTURES`` at another folder in the same format to check another fixture set.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ruyi.conditioning.buckets import bucket_size
from ruyi.conditioning.image import frames_from_images
from ruyi.models.loading import load_model, read_config
from ruyi.registry import IMAGE_ENCODERS, TRANSFORMERS, VAES
from ruyi.samplers import sampler_by_label
from tests.conftest import golden_cases, require_fixtures

COMPONENT_TOL = 1e-5
END_TO_END_TOL = 1e-4



def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert tuple(actual.shape) == tuple(expected.shape), f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().clamp_min(1e-12)
    return float((actual.float() - expected.float()).abs().max() / scale)


@functools.cache
def _model(kind: str, folder: str):
    registry = {"transformer": TRANSFORMERS, "vae": VAES, "image_encoder": IMAGE_ENCODERS}[kind]
    name = {"transformer": "ruyi_transformer3d", "vae": "magvit", "image_encoder": "clip_vision"}[kind]
    return load_model(registry.get(name), folder)


def _fixture_config(folder: Path) -> dict:
    return json.loads((folder / "golden.json").read_text())["config"]


# -- handlers, one per kind ------------------------------------------------------------------------
def check_transformer_forward(case, golden, folder):
    from ruyi.memory.skips import apply_skip_offload, remove_skip_offload

    model = _model("transformer", str(folder))
    prefix = case["inputs_prefix"]
    inputs = {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
    rotary = (inputs.pop("image_rotary_emb_cos"), inputs.pop("image_rotary_emb_sin"))
    hidden, timestep = inputs.pop("hidden_states"), inputs.pop("timestep")
    captured: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out[0] if isinstance(out, tuple) else out)
        )
        for name in case.get("trace") or {}
    ]
    apply_skip_offload(model, case.get("hidden_cache_size", 0))
    try:
        out = model(hidden, timestep, image_rotary_emb=rotary, **inputs)
    finally:
        remove_skip_offload(model)
        for h in handles:
            h.remove()
    for name, key in (case.get("trace") or {}).items():
        expected = golden[key]
        got = captured[name].reshape(expected.shape) if captured[name].numel() == expected.numel() else captured[name]
        assert rel_err(got, expected) < COMPONENT_TOL, f"trace {name} diverges"
    assert rel_err(out, golden[case["output"]]) < COMPONENT_TOL


def check_vae_encode(case, golden, folder):
    vae = _model("vae", str(folder))
    mean, logvar = vae.encode(golden[case["input"]])
    assert rel_err(mean, golden[case["outputs"]["mean"]]) < COMPONENT_TOL
    assert rel_err(logvar, golden[case["outputs"]["logvar"]]) < COMPONENT_TOL


def check_vae_decode(case, golden, folder):
    vae = _model("vae", str(folder))
    assert rel_err(vae.decode(golden[case["input"]]), golden[case["output"]]) < COMPONENT_TOL


def check_preprocess(case, golden, folder):
    end = folder / case["end_image"] if case.get("end_image") else None
    height, width = case["sample_size"]
    got = frames_from_images(folder / case["start_image"], end, frames=case["video_length"], height=height, width=width)
    outputs = case["outputs"]
    assert torch.equal(got.video, golden[outputs["video"]]) or rel_err(got.video, golden[outputs["video"]]) < 1e-6
    assert torch.equal(got.mask, golden[outputs["mask"]])
    assert torch.equal(torch.from_numpy(got.clip_image), golden[outputs["clip_image"]])


def check_aspect_buckets(case, golden, folder):
    wrong = [
        (row, bucket_size(row["image_wh"], row["base_resolution"]))
        for row in case["table"]
        if list(bucket_size(row["image_wh"], row["base_resolution"])) != list(row["height_width"])
    ]
    assert case["table"] and not wrong, f"{len(wrong)} bucket(s) differ, e.g. {wrong[:3]}"


def check_clip(case, golden, folder):
    encoder = _model("image_encoder", str(folder))
    height, width = _fixture_config(folder)["size"]
    with Image.open(folder / "start.png") as img:
        image = img.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    pixel_values = encoder.preprocess(image)
    assert rel_err(pixel_values, golden[case["outputs"]["pixel_values"]]) < COMPONENT_TOL
    assert rel_err(encoder(pixel_values), golden[case["outputs"]["features"]]) < COMPONENT_TOL


def check_sampler_timesteps(case, golden, folder):
    config = read_config(folder / "scheduler", "scheduler_config.json")
    assert case["timesteps"], "case lists no samplers"
    for label, expected in case["timesteps"].items():
        sampler = sampler_by_label(label)(scheduler_config=config)
        got = sampler.set_timesteps(case["steps"]).tolist()
        assert [float(t) for t in got] == [float(t) for t in expected], label


def check_end_to_end(case, golden, folder, **options):
    """``options``: more ``load_pipeline`` options (strategies...) that must keep the goldens too."""
    from ruyi import load_pipeline

    sampler = sampler_by_label(case["sampler"]).registry_name
    pipe = load_pipeline(folder, sampler=sampler, clip_apply_ratio=case["clip_apply_ratio"], **options)
    assert pipe.control.key(case["camera"], case["motion"]) == case["embedding_key"]
    if hasattr(pipe.sampler, "eta"):
        assert pipe.sampler.eta == case["eta"]
    end = folder / case["end_image"] if case.get("end_image") else None
    kwargs = dict(
        frames=case["video_length"], video_size=[case["height"], case["width"]], steps=case["steps"],
        cfg=case["guidance_scale"], camera=case["camera"], motion=case["motion"], seed=case.get("seed", 42),
        latents=golden[case["inputs"]["initial_latents"]], progress=False,
    )  # fmt: skip
    latents = pipe(folder / case["start_image"], end, output_latents=True, **kwargs)
    assert rel_err(latents, golden[case["outputs"]["final_latents"]]) < END_TO_END_TOL
    video = pipe.decode(latents)
    assert rel_err(video, golden[case["outputs"]["video"]]) < END_TO_END_TOL
    return pipe


HANDLERS = {
    "transformer_forward": check_transformer_forward,
    "vae_encode": check_vae_encode,
    "vae_decode": check_vae_decode,
    "preprocess": check_preprocess,
    "aspect_buckets": check_aspect_buckets,
    "clip": check_clip,
    "sampler_timesteps": check_sampler_timesteps,
    "end_to_end": check_end_to_end,
}

CASES = golden_cases() or [None]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"] if c else "no-fixture")
def test_golden_case(case, golden):
    folder = require_fixtures()
    handler = HANDLERS.get(case["kind"])
    assert handler is not None, f"golden case {case['name']!r} has kind {case['kind']!r}, which no test checks"
    handler(case, golden, folder)


def test_fixture_has_cases(fixture_dir):
    """An empty golden.json would make every parity check vanish silently."""
    assert golden_cases(), f"{fixture_dir / 'golden.json'} lists no cases"
