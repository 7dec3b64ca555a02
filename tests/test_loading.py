"""Loading through diffusers' from_pretrained, and the header check that runs before it: every fault
is one CheckpointError line naming the folder, the counts, the first keys and the fix."""

from __future__ import annotations

import json
import logging
import shutil
from typing import ClassVar

import pytest
import torch
from diffusers.configuration_utils import register_to_config
from safetensors.torch import load_file, save_file

from ruyi.errors import CheckpointError
from ruyi.models.base import RuyiModelMixin
from ruyi.models.image_encoder import CLIPImageEncoder
from ruyi.models.loading import load_model, random_model, read_config
from ruyi.models.transformer import RuyiTransformer3D

WEIGHTS = "diffusion_pytorch_model.safetensors"


class Toy(RuyiModelMixin):
    checkpoint_class_name = "ToyOriginal"
    subfolder = "toy"
    config_overrides: ClassVar[dict] = {"scale": 2.0}

    @register_to_config
    def __init__(self, *, width: int = 4, depth: int = 2, scale: float = 1.0) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))
        self.scale = scale

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x * self.scale


def save_toy(root, **config) -> Toy:
    torch.manual_seed(0)
    model = Toy.from_config({"unused_field": 1, **config})
    model.save_pretrained(root / "toy")
    return model


def rewrite(folder, change) -> None:
    """Apply ``change`` to the saved state dict and write it back."""
    state = load_file(str(folder / WEIGHTS))
    change(state)
    save_file(state, str(folder / WEIGHTS))


def error_of(call) -> str:
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# -- loading through the library ---------------------------------------------------------------
def test_round_trip_keeps_class_name_unknown_fields_and_applies_overrides(tmp_path, caplog):
    src = save_toy(tmp_path, width=3, depth=3)
    config = read_config(tmp_path / "toy")
    assert config["_class_name"] == "ToyOriginal" and config["unused_field"] == 1 and config["scale"] == 1.0
    with caplog.at_level(logging.WARNING):
        loaded = load_model(Toy, tmp_path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert loaded.config.unused_field == 1
    assert loaded.scale == 2.0  # config_overrides on top of config.json, as the original loader does
    for name, tensor in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_sharded_checkpoint_loads_and_a_missing_shard_is_named(tmp_path):
    src = Toy.from_config({"width": 16, "depth": 4})
    src.save_pretrained(tmp_path / "toy", max_shard_size="2KB")
    folder = tmp_path / "toy"
    shards = sorted(folder.glob("*-of-*.safetensors"))
    assert len(shards) > 1 and (folder / f"{WEIGHTS}.index.json").is_file()
    loaded = load_model(Toy, tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in src.state_dict().items())
    shards[-1].unlink()
    message = error_of(lambda: load_model(Toy, tmp_path))
    assert f"lists {len(shards)} shards but 1 are missing" in message and shards[-1].name in message


def test_index_listing_tensors_its_shards_lack(tmp_path):
    Toy.from_config({"width": 16, "depth": 4}).save_pretrained(tmp_path / "toy", max_shard_size="2KB")
    index = tmp_path / "toy" / f"{WEIGHTS}.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"].values()))
    data["weight_map"]["ghost.weight"] = first
    index.write_text(json.dumps(data))
    assert "lists 1 tensors its shards do not hold (e.g. ghost.weight)" in error_of(
        lambda: load_model(Toy, tmp_path)
    )


def test_missing_folder_config_and_weights_are_named(tmp_path):
    assert "does not exist" in error_of(lambda: load_model(Toy, tmp_path))
    (tmp_path / "toy").mkdir()
    assert "toy/config.json is missing" in error_of(lambda: load_model(Toy, tmp_path))
    (tmp_path / "toy" / "config.json").write_text("{}")
    assert f"no weights in {tmp_path / 'toy'}" in error_of(lambda: load_model(Toy, tmp_path))


def test_pickles_are_never_loaded(tmp_path, monkeypatch):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "config.json").write_text("{}")
    torch.save(Toy().state_dict(), tmp_path / "toy" / "diffusion_pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    message = error_of(lambda: load_model(Toy, tmp_path))
    assert "found only diffusion_pytorch_model.bin: pickled weights are never loaded" in message
    assert "convert them to safetensors" in message


def test_missing_and_unexpected_keys_list_counts_and_first_keys(tmp_path):
    save_toy(tmp_path, width=4, depth=3)
    rewrite(tmp_path / "toy", lambda s: s.update({f"extra.{i}": torch.zeros(1) for i in range(7)}))
    config = read_config(tmp_path / "toy")
    (tmp_path / "toy" / "config.json").write_text(json.dumps({**config, "depth": 5}))
    message = error_of(lambda: load_model(Toy, tmp_path))
    assert str(tmp_path / "toy") in message and "(10 tensors expected, 13 in the files)" in message
    assert "4 missing (e.g. layers.3.bias; layers.3.weight; layers.4.bias)" in message
    assert "7 unexpected (e.g. extra.0; extra.1; extra.2)" in message
    assert "re-download the checkpoint" in message


def test_shape_mismatch_is_reported(tmp_path):
    save_toy(tmp_path, width=4)
    (tmp_path / "toy" / "config.json").write_text(json.dumps({"width": 5}))
    message = error_of(lambda: load_model(Toy, tmp_path))
    assert "4 with another shape (e.g. layers.0.bias: file (4,) vs model (5,)" in message


def test_integer_tensors_where_floats_are_expected(tmp_path):
    save_toy(tmp_path)
    rewrite(tmp_path / "toy", lambda s: s.update({"layers.1.weight": s["layers.1.weight"].long()}))
    assert "1 stored as integers where the model has floats (e.g. layers.1.weight: I64)" in error_of(
        lambda: load_model(Toy, tmp_path)
    )


def test_truncated_file_is_reported(tmp_path):
    save_toy(tmp_path)
    path = tmp_path / "toy" / WEIGHTS
    path.write_bytes(path.read_bytes()[:-10])
    message = error_of(lambda: load_model(Toy, tmp_path))
    assert f"cannot read {path}" in message and "truncated or damaged: re-download it" in message


def test_the_check_runs_before_diffusers_reads_tensors(tmp_path, monkeypatch):
    import diffusers.models.modeling_utils as modeling

    save_toy(tmp_path)
    rewrite(tmp_path / "toy", lambda s: s.pop("layers.0.bias"))
    monkeypatch.setattr(
        modeling, "load_state_dict", lambda *a, **k: pytest.fail("diffusers read the weights")
    )
    assert "1 missing (e.g. layers.0.bias)" in error_of(lambda: load_model(Toy, tmp_path))


def test_dtype_and_fp32_modules_come_from_the_library(tmp_path):
    class Mixed(Toy):
        _keep_in_fp32_modules: ClassVar[list[str]] = ["0"]

    save_toy(tmp_path)
    model = load_model(Mixed, tmp_path, dtype=torch.bfloat16)
    assert model.layers[0].weight.dtype == torch.float32 and model.layers[1].weight.dtype == torch.bfloat16


# -- the real folders ---------------------------------------------------------------------------
def test_fixture_transformer_with_a_missing_tensor_names_it(fixture_dir, tmp_path):
    shutil.copytree(fixture_dir / "transformer", tmp_path / "transformer")
    rewrite(tmp_path / "transformer", lambda s: s.pop("proj_out.weight"))
    message = error_of(lambda: load_model(RuyiTransformer3D, tmp_path))
    assert str(tmp_path / "transformer") in message and "1 missing (e.g. proj_out.weight)" in message


def test_clip_encoder_goes_through_the_header_check(fixture_dir, tmp_path):
    shutil.copytree(fixture_dir / "image_encoder", tmp_path / "image_encoder")
    path = tmp_path / "image_encoder" / "model.safetensors"
    state = load_file(str(path))
    state["visual_projection.weight"] = state["visual_projection.weight"][:, :-1].contiguous()
    save_file(state, str(path))
    assert "1 with another shape (e.g. visual_projection.weight" in error_of(
        lambda: load_model(CLIPImageEncoder, tmp_path)
    )
    path.unlink()
    (path.parent / "pytorch_model.bin").write_bytes(b"")
    assert "pickled weights are never loaded" in error_of(lambda: load_model(CLIPImageEncoder, tmp_path))


def test_loading_prints_nothing(fixture_dir, capfd):
    """Entry points print one line per model and one line per user error: no library progress bars."""
    for cls in (CLIPImageEncoder, RuyiTransformer3D):
        load_model(cls, fixture_dir)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_random_model_has_the_real_shape_and_small_weights(fixture_dir):
    config = read_config(fixture_dir / "transformer")
    model = random_model(RuyiTransformer3D, config, dtype=torch.bfloat16, device="cpu", seed=3)
    expected = load_file(str(fixture_dir / "transformer" / WEIGHTS))
    got = model.state_dict()
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert {v.dtype for v in got.values()} == {torch.bfloat16}
    assert 0.015 < float(model.proj_out.weight.float().std()) < 0.025 and not model.training
    again = random_model(RuyiTransformer3D, config, dtype=torch.bfloat16, device="cpu", seed=3)
    assert torch.equal(again.proj_out.weight, model.proj_out.weight)
