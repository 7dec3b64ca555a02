"""The 3D transformer: loading, the long-skip store, the rotary helper, edge inputs, the real shape.

Golden parity of every ``transformer_forward`` case (output and trace, with the skip offload of
its ``hidden_cache_size``) runs in tests/test_golden.py with the other kinds.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ruyi.errors import CheckpointError
from ruyi.models.loading import load_model, meta_model
from ruyi.models.transformer import RuyiTransformer3D, rotary_embedding
from ruyi.memory.skips import (
    HOOK,
    CPUSkipStack,
    ParkedSkip,
    apply_skip_offload,
    park_long_skips,
    remove_skip_offload,
)
from tests.conftest import REPO

no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model(fixture_dir):
    return load_model(RuyiTransformer3D, fixture_dir)


@pytest.fixture(scope="module")
def arch(fixture_dir) -> dict:
    config = json.loads((fixture_dir / "transformer" / "config.json").read_text())
    return {**config, **RuyiTransformer3D.config_overrides}


@pytest.fixture(scope="module")
def inputs(golden):
    """The first transformer case's inputs: (tensor kwargs, (cos, sin))."""
    prefix = "transformer.in."
    found = {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
    rotary = (found.pop("image_rotary_emb_cos"), found.pop("image_rotary_emb_sin"))
    return found, rotary


def run(model, inputs, **changes):
    found, rotary = inputs
    kwargs = {**found, "image_rotary_emb": rotary, **changes}
    return model(kwargs.pop("hidden_states"), kwargs.pop("timestep"), **kwargs)


def deep_model(arch, num_layers: int = 10) -> RuyiTransformer3D:
    """The fixture's widths with more blocks (random weights), so that several long skips exist."""
    torch.manual_seed(0)
    return RuyiTransformer3D.from_config({**arch, "num_layers": num_layers}).eval()


def test_load_uses_every_checkpoint_tensor(model, fixture_dir):
    state = load_file(str(fixture_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert set(model.state_dict()) == set(state)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    # the fixture perturbs the stored time tables away from a sinusoid: they must be the loaded ones
    assert not torch.equal(model.blocks[0].t_embed.pe, type(model.blocks[0].t_embed)(model.hidden_size).pe)


@pytest.mark.parametrize("group", [1, 2, 3, 4, 5])
def test_cpu_skip_stack_matches_the_plain_path(arch, inputs, group):
    model = deep_model(arch)  # 10 blocks: 4 long skips, so groups 1..4 park and 5 never fills
    with torch.no_grad():
        expected = run(model, inputs)
        apply_skip_offload(model, group)
        try:
            got = run(model, inputs)
        finally:
            remove_skip_offload(model)
    assert torch.equal(got, expected)


class WatchedStack(CPUSkipStack):
    """A CPUSkipStack that logs ("push" | "pop", activations on the device) after every push and pop."""

    def __init__(self, group_size: int, log: list) -> None:
        super().__init__(group_size)
        self.log = log

    def push(self, tensor):
        super().push(tensor)
        self.log.append(("push", self.on_device))

    def pop(self):
        tensor = super().pop()
        self.log.append(("pop", self.on_device))
        return tensor


class Spy(ModelHook):
    """Records what a module is called with; ``fail`` raises instead, once."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.seen, self.fail = [], fail

    def pre_forward(self, module, *args, **kwargs):
        if self.fail:
            self.fail = False
            raise RuntimeError("a block failed")
        self.seen.append(args[0])
        return args, kwargs


def _hooks(module) -> list[str]:
    registry = getattr(module, "_diffusers_hook", None)
    return list(registry.hooks) if registry is not None else []


@pytest.mark.parametrize("group", [1, 2, 3, 5])
def test_parked_skips_keep_at_most_a_group_on_the_device(arch, inputs, group):
    model = deep_model(arch)  # 4 long skips
    log, stores = [], []

    def make_store():
        stores.append(WatchedStack(group, log))
        return stores[-1]

    with torch.no_grad():
        expected = run(model, inputs)
        park_long_skips(model, make_store)
        try:
            first, second = run(model, inputs), run(model, inputs)
        finally:
            remove_skip_offload(model)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(stores) == 2 and all(len(store) == 0 for store in stores)  # a store per forward, drained
    pushes = [n for op, n in log[:8] if op == "push"]
    pops = [n for op, n in log[:8] if op == "pop"]
    assert len(pushes) == len(pops) == 4 and [op for op, _ in log[:4]] == ["push"] * 4
    # while pushing, a full group leaves at once; only the unfilled remainder stays
    assert max(pushes) < group and pushes[-1] == 4 % group
    # while popping: the group being consumed and the one prefetched behind it
    assert max(pops) <= 2 * group - 1 and pops[-1] == 0


def test_what_passes_between_the_halves_is_a_placeholder(arch, inputs):
    model = deep_model(arch)
    plain, parked = Spy(), Spy()
    HookRegistry.check_if_exists_or_initialize(model.skip_pop).register_hook(plain, "spy")
    with torch.no_grad():
        run(model, inputs)
        apply_skip_offload(model, 2)
        HookRegistry.check_if_exists_or_initialize(model.skip_pop).register_hook(parked, "spy outside")
        run(model, inputs)
    assert len(plain.seen) == 8 and all(isinstance(t, torch.Tensor) for t in plain.seen)
    # the model's own list never holds the parked activation, only its shape
    assert len(parked.seen) == 4 and all(isinstance(p, ParkedSkip) for p in parked.seen)
    assert [p.shape for p in parked.seen] == [t.shape for t in plain.seen[4:]]


def test_a_failed_forward_leaves_nothing_behind(arch, inputs):
    model = deep_model(arch)
    stores = []
    with torch.no_grad():
        expected = run(model, inputs)
        park_long_skips(model, lambda: stores.append(CPUSkipStack(1)) or stores[-1])
        failing = Spy(fail=True)
        HookRegistry.check_if_exists_or_initialize(model.blocks[7]).register_hook(failing, "fail")
        with pytest.raises(RuntimeError, match="a block failed"):
            run(model, inputs)  # fails in the second half, with two skips still parked
        got = run(model, inputs)
    remove_skip_offload(model)
    assert len(stores[0]) == 2 and len(stores) == 2 and len(stores[1]) == 0
    assert torch.equal(got, expected)


def test_skip_offload_zero_is_off_and_negative_is_an_error(arch):
    model = deep_model(arch, num_layers=4)
    parts = (model, model.skip_push, model.skip_pop)
    apply_skip_offload(model, 3)
    apply_skip_offload(model, 2)  # again: replaces, does not stack
    assert all(_hooks(m) == [HOOK] for m in parts)
    apply_skip_offload(model, 0)
    assert all(_hooks(m) == [] for m in parts)
    with pytest.raises(ValueError, match="skip_steps=-1"):
        apply_skip_offload(model, -1)


def test_skip_stack_is_lifo_across_groups():
    stack = CPUSkipStack(group_size=2)
    for i in range(5):
        stack.push(torch.full((1,), float(i)))
    assert len(stack) == 5
    popped = []
    for remaining in range(4, -1, -1):
        popped.append(float(stack.pop()))
        assert len(stack) == remaining
    assert popped == [4.0, 3.0, 2.0, 1.0, 0.0]
    with pytest.raises(IndexError):
        stack.pop()
    with pytest.raises(ValueError, match="group_size"):
        CPUSkipStack(0)


@pytest.mark.gpu
@no_cuda
@pytest.mark.parametrize("group", [1, 3])
def test_cpu_skip_stack_on_cuda_matches_the_plain_path(arch, inputs, group):
    model = deep_model(arch).cuda()
    found, rotary = inputs
    cuda_inputs = ({k: v.cuda() for k, v in found.items()}, tuple(t.cuda() for t in rotary))
    with torch.no_grad():
        expected = run(model, cuda_inputs)
        apply_skip_offload(model, group)
        got = run(model, cuda_inputs)
    assert torch.equal(got, expected)


def test_rotary_helper_matches_the_golden_table(model, inputs):
    found, (cos, sin) = inputs
    _, _, _, height, width = found["hidden_states"].shape
    got_cos, got_sin = rotary_embedding(height, width, head_dim=model.head_dim, patch_size=model.patch_size)
    assert got_cos.shape == cos.shape
    assert torch.allclose(got_cos.float(), cos, atol=1e-6) and torch.allclose(got_sin.float(), sin, atol=1e-6)


def test_rotary_fits_wide_and_tall_grids_into_the_base_square():
    wide = rotary_embedding(24, 48, head_dim=8)[0]
    tall = rotary_embedding(48, 24, head_dim=8)[0]
    assert wide.shape == tall.shape == (12 * 24, 8) and not torch.equal(wide, tall)


def test_no_clip_features_means_all_padding(model, inputs):
    """Without CLIP features the model sees what the original pipeline feeds for 'no image'."""
    found, _ = inputs
    zeros = torch.zeros_like(found["clip_encoder_hidden_states"])
    with torch.no_grad():
        no_image = torch.zeros_like(found["clip_attention_mask"])
        expected = run(model, inputs, clip_encoder_hidden_states=zeros, clip_attention_mask=no_image)
        got = run(model, inputs, clip_encoder_hidden_states=None, clip_attention_mask=None)
    assert torch.equal(got, expected)


def test_a_single_frame_skips_the_time_table(arch, inputs):
    found, _ = inputs
    one_frame = {k: found[k][:, :, :1] for k in ("hidden_states", "inpaint_latents")}
    model = deep_model(arch, num_layers=4)
    with torch.no_grad():
        before = run(model, inputs, **one_frame)
        for block in model.blocks:
            block.t_embed.pe.add_(1.0)
        after = run(model, inputs, **one_frame)
        video = run(model, inputs)
    assert before.shape[2] == 1 and torch.equal(before, after)
    assert video.shape[2] == found["hidden_states"].shape[2]


def test_real_preset_has_7_19b_parameters():
    """The ruyi_mini_7b preset, built on the meta device, is the published 7.19 B model."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="infer", overrides=["model=ruyi_mini_7b"])
    arch = OmegaConf.to_container(cfg.model.transformer_arch, resolve=True)
    model = meta_model(RuyiTransformer3D, arch)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 7.19e9) / 7.19e9 < 0.005, params
    assert model.hidden_size == 2816 and len(model.blocks) == 40 and model.head_dim == 88
    assert all(p.is_meta for p in model.parameters())


def test_tiny_preset_equals_the_fixture_architecture(fixture_dir):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="infer", overrides=["model=ruyi_tiny"])
    fixture = json.loads((fixture_dir / "transformer" / "config.json").read_text())
    arch = OmegaConf.to_container(cfg.model.transformer_arch, resolve=True)
    assert {k: v for k, v in fixture.items() if not k.startswith("_")} == arch


@pytest.mark.parametrize(
    ("option", "error", "match"),
    [
        ({"basic_block_type": "motionmodule"}, NotImplementedError, "basic_block_type='motionmodule'"),
        ({"after_norm": True}, NotImplementedError, "after_norm"),
        ({"hidden_size": 100}, ValueError, "hidden_size=100"),
        ({"num_layers": 5}, ValueError, "num_layers=5 must be even"),
    ],
)
def test_unsupported_options_name_themselves(option, error, match):
    with pytest.raises(error, match=match), torch.device("meta"):
        RuyiTransformer3D(**option)
    # from a checkpoint's config.json it is the checkpoint's fault: one CheckpointError line
    with pytest.raises(CheckpointError, match=f"config.json does not describe a valid RuyiTransformer3D: .*{match}"):
        meta_model(RuyiTransformer3D, option, where=REPO / "somewhere")
