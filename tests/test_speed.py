"""benchmarks/speed.py on the CPU at tiny sizes: its FLOP count, option grammar and one whole run."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import speed
from benchmarks.speed_setup import count_flops, parse_option
from ruyi.models.attention import MathAttention, set_attention_backend
from ruyi.registry import ATTENTIONS
from tests.tiny_models import forward_inputs, tiny_transformer


def test_flop_count_agrees_with_torchs_flop_counter():
    """Linears: every addmm/mm except inside modules that use weights functionally (the pooler's
    and the resampler's multi-head attention); attention: the math kernel's bmm inside the blocks."""
    model = tiny_transformer()
    args, kwargs = forward_inputs(model, frames=2, height=8, width=8)
    ours, _ = count_flops(model, args, kwargs)
    set_attention_backend(model, MathAttention())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **kwargs)
    counts = {name: {str(op): n for op, n in ops.items()} for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__

    def matmuls(name: str) -> int:
        return sum(n for op, n in counts.get(name, {}).items() if op in ("aten.addmm", "aten.mm"))

    functional = matmuls(f"{root}.time_extra_emb.pooler") + matmuls(f"{root}.clip_projection.attn")
    assert ours.linear == matmuls("Global") - functional
    blocks = [f"{root}.blocks.{i}" for i in range(len(model.blocks))]
    assert ours.attention == sum(counts[b]["aten.bmm"] for b in blocks)
    assert ours.attention > 0 and ours.linear > 10 * ours.attention / 2


def test_option_grammar():
    names = ATTENTIONS.names()
    option = parse_option("compile@max-autotune-no-cudagraphs+fa3+pad96+fp8", names)
    assert (option.attention, option.pad, option.compile, option.mode, option.fp8) == (
        "fa3",
        96,
        True,
        "max-autotune-no-cudagraphs",
        True,
    )
    eager = parse_option("eager", names)
    assert (eager.attention, eager.compile, eager.fp8) == ("sdpa", False, False)
    assert parse_option("fp8", names).compile  # fp8_compute is never measured without compile
    with pytest.raises(SystemExit, match="unknown option token 'turbo'"):
        parse_option("cudnn+turbo", names)


def test_a_tiny_run_prints_every_section_and_writes_json(tmp_path, capsys):
    path = tmp_path / "speed.json"
    data = speed.main([
        "--tiny", "--shapes", "32x8", "--options", "eager,chunked+pad96,math",
        "--attention-options", "sdpa,chunked", "--vae", "untiled,tiled16:8,tiled8", "--vae-options", "eager",
        "--repeat", "1", "--json", str(path),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "### transformer forward" in printed and "### VAE decode 32² x 8" in printed
    assert json.loads(path.read_text()) == json.loads(json.dumps(data, default=str))
    rows = {(r["section"], r["option"]): r for r in data["rows"] if r["section"] != "vae"}
    assert set(rows) == {
        ("attention", "sdpa"), ("attention", "chunked"),
        ("transformer", "eager"), ("transformer", "chunked+pad96"), ("transformer", "math"),
    }  # fmt: skip
    for row in rows.values():
        assert "error" not in row, row
        assert row["rel_l2"] < 1e-5  # float32 on the CPU: every option computes the same function
    vae = [(r["tiling"], r.get("variant"), "error" in r) for r in data["rows"] if r["section"] == "vae"]
    assert vae == [("untiled", "eager", False), ("tiled16:8", "eager", False), ("tiled8", None, True)]
    eager = rows[("transformer", "eager")]
    assert eager["floor_s"] > 0 and eager["s"] > 0 and eager["tokens"] == 2 * 2 * 2
    assert eager["x_floor"] == pytest.approx(eager["s"] / eager["floor_s"])


def test_rows_past_the_time_budget_are_recorded_as_skipped(capsys):
    data = speed.main([
        "--tiny", "--shapes", "32x8", "--options", "eager", "--attention-options", "sdpa", "--vae", "",
        "--max-seconds", "1e-9",
    ])  # fmt: skip
    assert [(r["section"], r.get("skipped")) for r in data["rows"]] == [
        ("attention", True),
        ("transformer", True),
    ]
    assert "skipped: time budget" in capsys.readouterr().out
