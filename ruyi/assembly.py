"""The one place a pipeline is put together (work in progress: see issue 9)."""

from __future__ import annotations

from ruyi.components import load_pipeline

__all__ = ["load_pipeline"]
