"""What the transformer and the VAE get from diffusers' ModelMixin, proven on the tiny fixture (CPU, fp32):
save/load round trip in the real layout, layerwise FP8 casting, gradient checkpointing, regional
compile and peft adapters."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ruyi.models.loading import load_model, read_config
from ruyi.models.transformer import RuyiTransformer3D
from ruyi.models.vae import MagvitVAE3D

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def inputs(golden):
    """The first transformer case's inputs: (tensor kwargs, (cos, sin))."""
    prefix = "transformer.in."
    found = {k[len(prefix) :]: v for k, v in golden.items() if k.startswith(prefix)}
    return found, (found.pop("image_rotary_emb_cos"), found.pop("image_rotary_emb_sin"))


def run(model, inputs):
    found, rotary = inputs
    kwargs = dict(found)
    return model(kwargs.pop("hidden_states"), kwargs.pop("timestep"), image_rotary_emb=rotary, **kwargs)


@pytest.fixture(scope="module")
def reference(fixture_dir, inputs):
    with torch.no_grad():
        return run(load_model(RuyiTransformer3D, fixture_dir), inputs)


def rel_l2(actual, expected) -> float:
    return float((actual.float() - expected.float()).norm() / expected.float().norm())


@pytest.mark.parametrize("cls", [RuyiTransformer3D, MagvitVAE3D])
def test_save_pretrained_round_trip_equals_the_checkpoint(cls, fixture_dir, tmp_path):
    original = load_file(str(fixture_dir / cls.subfolder / WEIGHTS))
    load_model(cls, fixture_dir).save_pretrained(tmp_path / cls.subfolder)
    assert sorted(p.name for p in (tmp_path / cls.subfolder).iterdir()) == ["config.json", WEIGHTS]
    saved, source = read_config(tmp_path / cls.subfolder), read_config(fixture_dir / cls.subfolder)
    assert saved["_class_name"] == source["_class_name"] == cls.checkpoint_class_name
    # every field of the original config.json survives, the ones the class does not use too
    assert {k: v for k, v in source.items() if not k.startswith("_")} == {
        k: v for k, v in saved.items() if not k.startswith("_")
    }
    again = load_file(str(tmp_path / cls.subfolder / WEIGHTS))
    assert set(again) == set(original)
    assert all(torch.equal(again[k], original[k]) for k in original)
    reloaded = load_model(cls, tmp_path).state_dict()
    assert all(torch.equal(reloaded[k], original[k]) for k in original)


def test_load_dtype(fixture_dir):
    model = load_model(RuyiTransformer3D, fixture_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_layerwise_casting_to_fp8_stays_close(fixture_dir, inputs, reference):
    model = load_model(RuyiTransformer3D, fixture_dir)
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["blocks.0.ff.net.2.weight"] == torch.float8_e4m3fn
    # the declared skip patterns stay in the load dtype
    assert dtypes["blocks.0.norm2.weight"] == dtypes["pos_embed.proj.weight"] == torch.float32
    with torch.no_grad():
        got = run(model, inputs)
    error = rel_l2(got, reference)
    assert 0 < error < 0.1, error  # measured ~0.05: FP8 storage, not a silent no-op


def _loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    loss = run(model, inputs).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [False, True], ids=["default", "reentrant"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(fixture_dir, inputs, reentrant):
    model = load_model(RuyiTransformer3D, fixture_dir).train().requires_grad_(True)
    loss, grads = _loss_and_grads(model, inputs)
    calls = []

    def checkpoint(function, *args):
        calls.append(function)
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=reentrant)

    model.enable_gradient_checkpointing(checkpoint)
    assert model.is_gradient_checkpointing
    checkpointed_loss, checkpointed_grads = _loss_and_grads(model, inputs)
    assert len(calls) == len(model.blocks)
    assert torch.equal(checkpointed_loss, loss)
    # a reentrant checkpoint only passes gradients to its positional inputs: the time
    # embedding's gradient proves that temb and the text reach every block that way
    assert (
        set(checkpointed_grads) == set(grads) and "time_extra_emb.timestep_embedder.linear_1.weight" in grads
    )
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():  # no gradients, no checkpointing
        run(model, inputs)
    assert len(calls) == len(model.blocks)


def test_compile_repeated_blocks_compiles_each_block(fixture_dir, inputs, reference):
    model = load_model(RuyiTransformer3D, fixture_dir)
    torch._dynamo.reset()
    model.compile_repeated_blocks(backend="eager")
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    assert model._compiled_call_impl is None  # regional: the model itself stays eager
    with torch.no_grad():
        got = run(model, inputs)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)


def test_peft_lora_adapter(fixture_dir, inputs, reference):
    from peft import LoraConfig

    model = load_model(RuyiTransformer3D, fixture_dir)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False), "style")
    lora = [name for name, _ in model.named_parameters() if "lora_A" in name]
    assert len(lora) == len(targets) * sum(3 if b.attn_clip is not None else 2 for b in model.blocks)
    with torch.no_grad():
        adapted = run(model, inputs)
        model.disable_adapters()
        plain = run(model, inputs)
    assert rel_l2(adapted, reference) > 1e-3
    torch.testing.assert_close(plain, reference, rtol=0, atol=0)
    assert model.active_adapters() == ["style"]


def test_tiny_checkpoint_is_written_by_save_pretrained(tmp_path):
    from omegaconf import OmegaConf

    from ruyi.checkpoints.tiny import create_tiny_checkpoint
    from tests.conftest import REPO

    preset = OmegaConf.to_container(
        OmegaConf.load(REPO / "configs" / "model" / "ruyi_tiny.yaml"), resolve=True
    )
    path = create_tiny_checkpoint(tmp_path / "tiny", preset)
    for kind, cls in (("transformer", RuyiTransformer3D), ("vae", MagvitVAE3D)):
        config = json.loads((path / kind / "config.json").read_text())
        assert config["_class_name"] == cls.checkpoint_class_name
        assert {k: v for k, v in config.items() if not k.startswith("_")} == preset[f"{kind}_arch"]
        load_model(cls, path)
    # an existing folder is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(Exception, match="exists and is not a checkpoint"):
        create_tiny_checkpoint(tmp_path / "mine", preset)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
