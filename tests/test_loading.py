"""The checkpoint loader: strict keys, shards, and errors that name the real cause."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ruyi.models.loading import CheckpointError, load_component, load_state_dict, read_config


class Toy(torch.nn.Module):
    subfolder = "toy"

    def __init__(self, *, width: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(depth))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _write(folder, model, config, **extra_tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "Toy", "unused_field": 1, **config}))
    state = {**{k: v.contiguous() for k, v in model.state_dict().items()}, **extra_tensors}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return state


def test_round_trip_ignores_unknown_config_fields(tmp_path):
    src = Toy(width=3, depth=3)
    _write(tmp_path / "toy", src, {"width": 3, "depth": 3})
    loaded = load_component(Toy, tmp_path / "toy")
    x = torch.randn(2, 3)
    assert torch.equal(loaded(x), src(x)) and len(loaded.layers) == 3


def test_sharded_checkpoint(tmp_path):
    src = Toy(width=3, depth=2)
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"width": 3, "depth": 2}))
    state = src.state_dict()
    keys = sorted(state)
    shards = {"a.safetensors": keys[:2], "b.safetensors": keys[2:]}
    for name, names in shards.items():
        save_file({k: state[k].contiguous() for k in names}, str(folder / name))
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert set(load_state_dict(folder)) == set(keys)
    (folder / "b.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"1 shard\(s\) missing .*b\.safetensors"):
        load_state_dict(folder)


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_config(tmp_path / "nope")
    (tmp_path / "toy").mkdir()
    with pytest.raises(CheckpointError, match=r"toy/config\.json is missing"):
        load_component(Toy, tmp_path / "toy")
    (tmp_path / "toy" / "config.json").write_text("{}")
    torch.save({}, tmp_path / "toy" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"no weights in .*pytorch_model\.bin.*not loaded for safety"):
        load_component(Toy, tmp_path / "toy")


def test_key_mismatch_lists_first_keys_and_counts(tmp_path):
    src = Toy(width=4, depth=3)
    state = _write(tmp_path / "toy", src, {"width": 4, "depth": 3}, **{f"extra.{i}": torch.zeros(1) for i in range(7)})
    assert len(state) == 13
    with pytest.raises(CheckpointError, match=r"4 missing \(e\.g\. layers\.3\.bias.*7 unexpected \(e\.g\. extra\.0"):
        load_component(Toy, tmp_path / "toy", config_overrides={"depth": 5})


def test_shape_mismatch_is_reported(tmp_path):
    _write(tmp_path / "toy", Toy(width=4), {"width": 4})
    (tmp_path / "toy" / "config.json").write_text(json.dumps({"width": 5}))
    with pytest.raises(CheckpointError, match=r"shape\(s\) .*layers\.0\.weight: checkpoint \(4, 4\) vs model \(5, 5\)"):
        load_component(Toy, tmp_path / "toy")


def test_damaged_file_is_reported(tmp_path):
    _write(tmp_path / "toy", Toy(), {})
    (tmp_path / "toy" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="damaged or incomplete"):
        load_component(Toy, tmp_path / "toy")


def test_dtype_cast_keeps_fp32_modules(tmp_path):
    class Mixed(Toy):
        _keep_in_fp32_modules = ["0"]

    _write(tmp_path / "toy", Mixed(), {})
    model = load_component(Mixed, tmp_path / "toy", dtype=torch.bfloat16)
    assert model.layers[0].weight.dtype == torch.float32 and model.layers[1].weight.dtype == torch.bfloat16
    assert not model.layers[1].weight.requires_grad
