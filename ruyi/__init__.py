"""ruyi: a plugin-style, Hydra-configured framework for the Ruyi-Mini-7B image-to-video model.

``ruyi.load_pipeline(path, **options)`` is the one public way to build a pipeline in Python.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_pipeline"]


def __getattr__(name: str) -> Any:  # lazy: ``import ruyi`` stays cheap (no torch, no diffusers)
    if name == "load_pipeline":
        from ruyi.assembly import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'ruyi' has no attribute {name!r}")
