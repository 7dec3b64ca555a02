"""What every memory option shares: the ``memory`` stage, and diffusers hooks on the forwards it changes.

A memory option changes how much activation memory the models hold, never what they compute. It
registers a diffusers ``ModelHook`` on chosen module instances (the model files stay as they are)
under its own name and takes them off again on ``remove``. Offload hooks attach later (``STAGES``:
memory before offload), so in each module's ``HookRegistry`` they sit outside ours: an offload
hook places the weights once, then ours may call the forward several times (slice by slice, item
by item) before the offload hook takes them away again.
"""

from __future__ import annotations

from ruyi.extension import Extension


class MemoryOption(Extension):
    """Base: ``check(plan)`` before any weight loads, ``apply(pipe)`` / ``remove(pipe)`` after.

    Facts read by others through ``Plan.has``: ``splits_batch`` (the guidance halves run one after
    another, so anything taking statistics over the whole batch would change).
    """

    stage = "memory"
    splits_batch = False
