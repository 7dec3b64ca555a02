"""Every sampler end to end against goldens made by running the original code on the tiny fixture.

``tests/goldens/original_samplers.{json,safetensors}`` come from ``tools/original_goldens.py``
(the JSON names the original commit). They are ``end_to_end`` cases in the fixture's format and
run through ``test_golden``'s handler on the fixture's checkpoint. The PNDM cases guard what
the original counts in model evaluations, not steps: the CLIP schedule, and the windows of
TeaCache and Enhance-A-Video (a case's ``plugins`` are built from our registry with the options
that match the original's settings).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ruyi.plugins import TeaCache
from ruyi.registry import PLUGINS, SAMPLERS
from tests.conftest import require_fixtures, skip_parity
from tests.test_golden import check_end_to_end

GOLDENS = Path(__file__).resolve().parent / "goldens"
DOCUMENT = json.loads((GOLDENS / "original_samplers.json").read_text())


@pytest.fixture(scope="module")
def original_goldens():
    return load_file(str(GOLDENS / "original_samplers.safetensors"))


@pytest.fixture(scope="module")
def made_on_this_fixture() -> Path:
    """The fixture folder, if its files are those the goldens were made on (RUYI_FIXTURES may
    point at another checkpoint, for which these numbers mean nothing)."""
    folder = require_fixtures()
    expected = DOCUMENT["fixture"]["sha256"]
    changed = [
        n for n, digest in expected.items() if hashlib.sha256((folder / n).read_bytes()).hexdigest() != digest
    ]
    if changed:
        skip_parity(
            f"{folder} differs from the fixture the original-sampler goldens were made on "
            f"({', '.join(changed)}); rerun tools/original_goldens.py"
        )
    return folder


@pytest.mark.parametrize("case", DOCUMENT["cases"], ids=lambda c: c["name"])
def test_original_sampler_case(case, original_goldens, made_on_this_fixture):
    plugins = [(name, options) for name, options in (case.get("plugins") or {}).items()]
    pipe = check_end_to_end(case, original_goldens, made_on_this_fixture, plugins=plugins)
    if "teacache_skipped_calls" in case:
        (cache,) = [c for c in pipe.callbacks if isinstance(c, TeaCache)]
        assert cache.skipped_steps == case["teacache_skipped_calls"]


def test_goldens_cover_every_sampler_pndm_count_and_plugin():
    """Shrinking the file must not silently drop what it guards."""
    cases = DOCUMENT["cases"]
    # the original's samplers (ruyi.samplers.schedulers); turbo, a distilled student's, has no original
    labels = {SAMPLERS.get(name).label for name in SAMPLERS.names() if SAMPLERS.get(name).__module__ == "ruyi.samplers.schedulers"}
    assert {c["sampler"] for c in cases} == labels
    assert {c["steps"] for c in cases if c["sampler"] == "PNDM"} >= {4, 5}
    assert {c["end_image"] is None for c in cases} == {True, False}
    plugins = {name for c in cases if c["sampler"] == "PNDM" for name in c.get("plugins", {})}
    assert plugins == {"teacache", "enhance_a_video"} and plugins <= set(PLUGINS.names())
    assert DOCUMENT["produced_by"]["commit"] != "unknown (not a git checkout)"
