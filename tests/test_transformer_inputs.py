"""The transformer-input contract: latent/token geometry and the one way to build the forward's inputs."""

from __future__ import annotations

import torch

from ruyi.memory.estimate import transformer_inputs
from ruyi.models.transformer.inputs import LatentGrid, TransformerInputs, dummy_inputs, image_meta
from tests.tiny_models import tiny_arch, tiny_transformer


def test_latent_grid_of_the_real_shapes():
    grid = LatentGrid.of_video(120, 768, 768)  # 7B: VAE 4x in time, 8x in space, 2x2 patches
    assert (grid.frames, grid.height, grid.width) == (30, 96, 96)
    assert grid.tokens_per_frame == 48 * 48 and grid.tokens == 69_120
    assert grid.pixel_size == (768, 768)
    assert LatentGrid.of_video(1, 512, 512).frames == 1  # an image stays one latent frame
    assert LatentGrid.of_video(8, 80, 80, patch_size=1).tokens_per_frame == 100  # the tiny default
    assert LatentGrid.of_video(8, 80, 80, patch_size=2).tokens_per_frame == 25
    assert grid.shape(16, batch=2) == (2, 16, 30, 96, 96)


def test_image_meta_is_original_size_then_target_size():
    meta = image_meta(LatentGrid.of_video(16, 384, 672), batch=2)
    assert meta.tolist() == [[1024, 1024, 384, 672, 0, 0]] * 2


def test_dummy_inputs_drive_a_forward_and_their_shapes_follow_the_grid():
    model = tiny_transformer()
    grid = LatentGrid(2, 8, 8, patch_size=model.patch_size)
    inputs = dummy_inputs(dict(model.config), grid, batch=2)
    assert inputs.hidden_states.shape == (2, 16, 2, 8, 8) and inputs.inpaint_latents.shape == (2, 32, 2, 8, 8)
    assert inputs.image_rotary_emb[0].shape == (grid.tokens_per_frame, model.head_dim)
    with torch.no_grad():
        out = inputs(model)
    assert out.shape == (2, model.out_channels, 2, 8, 8)
    args, kwargs = inputs.as_call()
    with torch.no_grad():
        assert torch.equal(model(*args, **kwargs), out)


def test_replace_keeps_the_rest():
    model = tiny_transformer()
    inputs = dummy_inputs(dict(model.config), LatentGrid(1, 4, 4, patch_size=model.patch_size), batch=1)
    other = inputs.replace(timestep=torch.zeros(1))
    assert other.timestep.item() == 0 and other.hidden_states is inputs.hidden_states
    assert set(inputs.kwargs()) == {f for f in TransformerInputs.__dataclass_fields__} - {"hidden_states", "timestep"}


def test_meta_inputs_of_the_real_shape_hold_no_storage():
    args, kwargs = transformer_inputs(tiny_arch(), batch=2, frames=120, height=768, width=768, dtype=torch.bfloat16)
    assert args[0].device.type == "meta" and args[0].shape == (2, 16, 30, 96, 96)
    assert kwargs["image_rotary_emb"][0].shape[0] == 48 * 48
