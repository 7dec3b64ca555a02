"""Speed options keep the CPU float32 goldens (benchmarks/RESULTS.md): the first end-to-end golden case, built by
the real assembly with an attention backend, head-dim padding and regional compile attached."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import golden_cases
from tests.test_golden import check_end_to_end

# aot_eager traces exactly the graphs inductor would get (tests/test_compile.py runs inductor itself)
COMPILE = ("regional", {"backend": "aot_eager", "fullgraph": True})
STRATEGIES = {
    "chunked+pad96": {"attention": ("chunked", {"pad_head_dim": 96, "max_score_bytes": 4096})},
    "math+pad32+compile": {"attention": ("math", {"pad_head_dim": 32}), "compile": COMPILE},
    "auto+compile": {"attention": "auto", "compile": COMPILE},
}


@pytest.mark.parametrize("name", STRATEGIES)
def test_speed_options_keep_the_end_to_end_golden(name, golden, fixture_dir):
    case = next(c for c in golden_cases() if c["kind"] == "end_to_end")
    torch._dynamo.reset()
    pipe = check_end_to_end(case, golden, fixture_dir, device="cpu", strategies=STRATEGIES[name])
    processors = [m.processor for m in pipe.transformer.modules() if hasattr(m, "processor")]
    assert len(processors) == 3 * len(pipe.transformer.blocks)  # self, text and CLIP attention
    chosen = STRATEGIES[name]["attention"]
    expected = chosen if isinstance(chosen, str) else chosen[0]
    assert {p.attention_backend.registry_name for p in processors} == {expected}
    compiled = [b._compiled_call_impl is not None for b in pipe.transformer.blocks]
    assert all(compiled) if "compile" in STRATEGIES[name] else not any(compiled)
