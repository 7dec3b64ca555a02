"""LoRA files of every lineage merge at the scale their trainer used.

The model is a stand-in with the transformer's module paths; the oracles are hand-computed deltas
and peft's own ``merge_and_unload``.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ruyi.errors import InputError
from ruyi.plugins import LoRAWeights

TARGET = "blocks.0.attn1.to_q"


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_q, self.to_k = nn.Linear(6, 6), nn.Linear(6, 6)
        self.to_out = nn.ModuleList([nn.Linear(6, 6)])

    def forward(self, x):
        return self.to_out[0](self.to_q(x) + self.to_k(x))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn1 = Attn()

    def forward(self, x):
        return self.attn1(x)


class Stand(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        return self.blocks[1](self.blocks[0](x))


def _factors(rank=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, 6, generator=g), torch.randn(6, rank, generator=g)


def _merged_delta(tmp_path, tensors, name="l.safetensors", metadata=None, config=None):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata)
    if config is not None:
        (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    model = Stand()
    before = model.get_submodule(TARGET).weight.detach().clone()
    LoRAWeights(path=path).merge(model)
    return model.get_submodule(TARGET).weight.detach() - before


def test_easyanimate_double_underscore_keys_resolve_like_single(tmp_path):
    down, up = _factors()
    tensors = {"lora_unet__blocks_0_attn1_to_q.lora_down.weight": down, "lora_unet__blocks_0_attn1_to_q.lora_up.weight": up,
               "lora_unet__blocks_0_attn1_to_q.alpha": torch.tensor(1.0)}  # fmt: skip
    delta = _merged_delta(tmp_path, tensors)
    torch.testing.assert_close(delta, 0.5 * up @ down)  # alpha / rank = 1 / 2


def test_peft_file_takes_alpha_from_adapter_config(tmp_path):
    down, up = _factors()
    tensors = {f"base_model.model.{TARGET}.lora_A.weight": down, f"base_model.model.{TARGET}.lora_B.weight": up}
    delta = _merged_delta(tmp_path, tensors, config={"r": 2, "lora_alpha": 4})
    torch.testing.assert_close(delta, 2.0 * up @ down)


def test_peft_file_without_any_alpha_merges_at_scale_one(tmp_path):
    down, up = _factors()
    delta = _merged_delta(tmp_path, {f"{TARGET}.lora_A.weight": down, f"{TARGET}.lora_B.weight": up})
    torch.testing.assert_close(delta, up @ down)


def test_diffusers_header_metadata_alpha_pattern_and_rslora(tmp_path):
    down, up = _factors(rank=4)
    tensors = {f"transformer.{TARGET}.lora_A.weight": down, f"transformer.{TARGET}.lora_B.weight": up}
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 8})}
    torch.testing.assert_close(_merged_delta(tmp_path, tensors, metadata=meta), 2.0 * up @ down)
    pattern = {"r": 4, "lora_alpha": 8, "alpha_pattern": {"attn1.to_q": 2}}
    torch.testing.assert_close(_merged_delta(tmp_path / "..", tensors, "p.safetensors", config=pattern), 0.5 * up @ down)
    (tmp_path / ".." / "adapter_config.json").unlink()
    rs = {"r": 4, "lora_alpha": 8, "use_rslora": True}
    torch.testing.assert_close(_merged_delta(tmp_path, tensors, "r.safetensors", config=rs), 8 / math.sqrt(4) * up @ down)


def test_dora_is_refused(tmp_path):
    down, up = _factors()
    with pytest.raises(InputError, match="DoRA"):
        _merged_delta(tmp_path, {f"{TARGET}.lora_A.weight": down, f"{TARGET}.lora_B.weight": up},
                      config={"r": 2, "lora_alpha": 2, "use_dora": True})  # fmt: skip


def test_peft_save_pretrained_output_merges_to_peft_merge_and_unload(tmp_path):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_k", "to_out.0"], init_lora_weights=False)
    model = peft.get_peft_model(Stand(), config)
    model.save_pretrained(tmp_path)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    mine = Stand()
    LoRAWeights(path=tmp_path / "adapter_model.safetensors").merge(mine)
    changed = 0
    for key, value in mine.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)
        changed += int(not torch.equal(value, Stand().state_dict()[key]))
    assert changed == 6  # 3 targets x 2 blocks, at lora_alpha / r = 2


# -- the base model an exported LoRA records ----------------------------------------------------
def test_an_exported_lora_names_its_model_and_another_model_refuses_it(fixture_dir, tmp_path):
    """Exported as scripts/train.py exports (for the parity checkpoint); a checkpoint whose
    transformer config differs refuses it before any weight loads and names the model= to use;
    the same checkpoint, and a LoRA without the record, still load."""
    import shutil

    from safetensors import safe_open

    from ruyi.assembly import PipelineSpec
    from ruyi.plugins.lora import base_model_metadata
    from ruyi.training.finetune import LoRAFinetune

    state = {f"{TARGET}.lora_A.default.weight": torch.zeros(2, 32), f"{TARGET}.lora_B.default.weight": torch.zeros(32, 2)}
    made = LoRAFinetune(rank=2, alpha=2).export(
        state, source=fixture_dir, output_dir=tmp_path,
        base_model=base_model_metadata("ruyi-tiny", fixture_dir / "transformer", preset="ruyi_tiny"),
    )  # fmt: skip
    with safe_open(str(made), framework="pt") as f:
        meta = f.metadata()
    assert meta["ruyi_model"] == "ruyi-tiny" and meta["ruyi_model_preset"] == "ruyi_tiny"
    assert len(meta["ruyi_transformer_config"]) == 16

    other = tmp_path / "other"
    shutil.copytree(fixture_dir, other)
    config = json.loads((other / "transformer" / "config.json").read_text())
    (other / "transformer" / "config.json").write_text(json.dumps({**config, "text_len": 9}))
    plain = tmp_path / "plain.safetensors"
    save_file({k.replace(".default", ""): v for k, v in state.items()}, str(plain))

    def validate(checkpoint, lora):
        return PipelineSpec.from_names(checkpoint, plugins=[LoRAWeights(path=lora)]).validate()

    validate(fixture_dir, made)  # its own model
    validate(other, plain)  # no record: loads as before
    with pytest.raises(InputError, match="was trained for model=ruyi_tiny .*pass model=ruyi_tiny"):
        validate(other, made)
