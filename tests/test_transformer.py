"""The 3D transformer: strict loading, the long-skip stack, the rotary helper, the real shape.

Golden parity of the forward pass (and its trace) runs in tests/test_golden.py.
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ruyi.components import load_model
from ruyi.models.loading import build_empty
from ruyi.models.transformer import RuyiTransformer3D, rotary_embedding
from ruyi.offload.skip_steps import CPUSkipStack, apply_skip_offload, remove_skip_offload
from tests.conftest import REPO


@pytest.fixture(scope="module")
def model(fixture_dir):
    return load_model(RuyiTransformer3D, fixture_dir)


@pytest.fixture(scope="module")
def inputs(golden):
    prefix = "transformer.in."
    found = {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
    rotary = (found.pop("image_rotary_emb_cos"), found.pop("image_rotary_emb_sin"))
    return found, rotary


def test_strict_load_uses_every_checkpoint_tensor(model, fixture_dir):
    state = load_file(str(fixture_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert set(model.state_dict()) == set(state)
    assert torch.equal(model.blocks[0].t_embed.pe, state["blocks.0.t_embed.pe"])  # stored table, not recomputed


@pytest.mark.parametrize("group", [1, 2, 3])
def test_cpu_skip_stack_matches_the_plain_path(model, inputs, group):
    found, rotary = inputs
    args = {k: v for k, v in found.items() if k not in ("hidden_states", "timestep")}
    expected = model(found["hidden_states"], found["timestep"], image_rotary_emb=rotary, **args)
    apply_skip_offload(model, group)
    try:
        got = model(found["hidden_states"], found["timestep"], image_rotary_emb=rotary, **args)
    finally:
        remove_skip_offload(model)
    assert torch.equal(got, expected)


def test_skip_stack_is_lifo_across_groups():
    stack = CPUSkipStack(group_size=2)
    for i in range(5):
        stack.push(torch.full((1,), float(i)))
    assert len(stack) == 5
    assert [float(stack.pop()) for _ in range(5)] == [4.0, 3.0, 2.0, 1.0, 0.0]
    with pytest.raises(IndexError):
        stack.pop()
    with pytest.raises(ValueError, match="group_size"):
        CPUSkipStack(0)


def test_rotary_helper_matches_the_golden_table(model, inputs):
    found, (cos, sin) = inputs
    _, _, _, height, width = found["hidden_states"].shape
    got_cos, got_sin = rotary_embedding(height, width, head_dim=model.head_dim, patch_size=model.patch_size)
    assert torch.allclose(got_cos.float(), cos, atol=1e-6) and torch.allclose(got_sin.float(), sin, atol=1e-6)


def test_rotary_fits_wide_and_tall_grids_into_the_base_square():
    wide = rotary_embedding(24, 48, head_dim=8)[0]
    tall = rotary_embedding(48, 24, head_dim=8)[0]
    assert wide.shape == tall.shape == (12 * 24, 8) and not torch.equal(wide, tall)


def test_real_preset_has_7_19b_parameters():
    """The ruyi_mini_7b preset, built on the meta device, is the published 7.19 B model."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="infer", overrides=["model=ruyi_mini_7b"])
    arch = OmegaConf.to_container(cfg.model.transformer_arch, resolve=True)
    model = build_empty(RuyiTransformer3D, arch)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 7.19e9) / 7.19e9 < 0.005, params
    assert model.hidden_size == 2816 and len(model.blocks) == 40 and model.head_dim == 88


def test_tiny_preset_equals_the_fixture_architecture(fixture_dir):
    import json

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="infer")
    fixture = json.loads((fixture_dir / "transformer" / "config.json").read_text())
    arch = OmegaConf.to_container(cfg.model.transformer_arch, resolve=True)
    assert {k: v for k, v in fixture.items() if not k.startswith("_")} == arch


def test_unsupported_block_type_names_itself():
    with pytest.raises(NotImplementedError, match="basic_block_type='motionmodule'"):
        build_empty(RuyiTransformer3D, {"basic_block_type": "motionmodule"})
