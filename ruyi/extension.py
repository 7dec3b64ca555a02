"""One lifecycle for everything that attaches to a pipeline from outside.

Placement (offload), precision, activation-memory options, long-skip parking, VAE tiles,
attention kernels, compile, parallel degrees and plugins (LoRA, TeaCache, Enhance-A-Video) all
have the same shape:

- declared facts as class attributes, read by the others through ``Plan.has`` (for example
  ``loads_per_block``, ``splits_batch``, ``reads_whole_batch``);
- ``check(plan)``: pure, before any weight loads; raises a :class:`ruyi.errors.ConfigError`
  (or another ``RuyiUserError``) for a combination that cannot work;
- ``apply(pipe)`` / ``remove(pipe)``: attach to a built pipeline and take off again; a forward is
  changed through diffusers' ``HookRegistry`` (see :mod:`ruyi.hooks`), never by editing the model;
- ``stage``: where in :data:`STAGES` it attaches.

:func:`attach` is the one loop: the assembly calls it after loading the weights, ComfyUI calls it
for the per-run plugins of a cached pipeline (:func:`attached`), and every attached extension is
listed in ``pipe.extensions`` so :func:`detach` can take them off in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from ruyi.errors import ConfigError

log = logging.getLogger(__name__)

# The order extensions attach in. LoRA merges into the weights as loaded, FP8 storage comes before
# anything moves the (then smaller) weights, sharding before placement, kernel choices last.
STAGES = ("plugins", "precision", "parallel", "memory", "skip", "vae", "offload", "attention", "compile")


class Extension:
    """Base class of every strategy and plugin (see the module docstring)."""

    stage: ClassVar[str] = ""

    def check(self, plan: Any) -> None:
        """Raise for a combination that cannot work; no side effects (none by default)."""

    def apply(self, pipe: Any) -> None:
        raise NotImplementedError

    def remove(self, pipe: Any) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"


def stage_index(extension: Any) -> int:
    stage = getattr(extension, "stage", None)
    if stage not in STAGES:
        raise ConfigError(f"{extension!r} declares stage={stage!r}; extensions must declare one of {', '.join(STAGES)}")
    return STAGES.index(stage)


def in_stage_order(extensions: Iterable[Any]) -> list[Any]:
    """Stable sort by stage: within a stage, the order given (e.g. the user's list of plugins)."""
    return sorted(extensions, key=stage_index)


def attach(extensions: Iterable[Any], pipe: Any) -> list[Any]:
    """Apply ``extensions`` to ``pipe`` in stage order; returns them in the order applied."""
    applied = []
    for extension in in_stage_order(extensions):
        log.info("attaching %s", extension)
        extension.apply(pipe)
        applied.append(extension)
        pipe.extensions.append(extension)
    return applied


def detach(extensions: Iterable[Any], pipe: Any) -> None:
    """Remove ``extensions`` from ``pipe`` in the reverse of the order they were attached."""
    for extension in reversed(list(extensions)):
        extension.remove(pipe)
        if extension in pipe.extensions:
            pipe.extensions.remove(extension)


@contextmanager
def attached(pipe: Any, extensions: Iterable[Any]) -> Iterator[Any]:
    """``with attached(pipe, [teacache]): pipe(...)``: attached for the block, removed after it
    (also when the block raises, and only those that were attached)."""
    applied: list[Any] = []
    try:
        for extension in in_stage_order(extensions):
            applied += attach([extension], pipe)
        yield pipe
    finally:
        detach(applied, pipe)
