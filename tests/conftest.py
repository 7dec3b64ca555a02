"""Shared test fixtures: where the parity checkpoint lives, and a small tiny-model preset."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures" / "ruyi-tiny"


def fixtures_dir() -> Path:
    """``RUYI_FIXTURES`` or ``../shared/fixtures/ruyi-tiny`` beside the checkout."""
    return Path(os.environ.get("RUYI_FIXTURES", DEFAULT_FIXTURES))


def require_fixtures() -> Path:
    """The fixture folder; skip without it on a user's machine, fail in CI (CI=true)."""
    folder = fixtures_dir()
    if (folder / "golden.json").is_file():
        return folder
    skip_parity(
        f"parity fixture not found at {folder} (set RUYI_FIXTURES or place shared/ beside the checkout); "
        "these tests prove that real Ruyi-Mini-7B weights load and run"
    )


def skip_parity(reason: str) -> NoReturn:
    """Skip a parity test on a user's machine; in CI (CI=true) it must run, so fail instead."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI requires the parity tests: {reason}")
    pytest.skip(reason)


def golden_cases() -> list[dict]:
    """The cases of golden.json (empty when the fixture is absent: the tests then skip or fail)."""
    path = fixtures_dir() / "golden.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())["cases"]


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return require_fixtures()


@pytest.fixture(scope="session")
def golden(fixture_dir: Path):
    from safetensors.torch import load_file

    return load_file(str(fixture_dir / "golden.safetensors"))
