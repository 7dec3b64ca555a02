"""Plugins that change how the transformer runs without editing it: LoRA weights, TeaCache,
Enhance-A-Video. Each has ``apply(pipe)`` / ``remove(pipe)`` and keeps its own state; TeaCache and
Enhance-A-Video change forwards through diffusers' ``HookRegistry`` hooks on the transformer's
submodules, and add themselves to ``pipe.callbacks`` (the denoising loop's callbacks) to follow the steps.

From Hydra (``configs/infer.yaml``): ``lora`` is a list of ``{path, strength}``; ``teacache`` and
``enhance_a_video`` are groups, null (off) by default, ``on`` to enable. ``ruyi.assembly`` builds
them like every other component and attaches them first.
"""

from __future__ import annotations

from ruyi.plugins.enhance_a_video import EnhanceAVideo, enhance_factor
from ruyi.plugins.lora import LoRAWeights, read_lora
from ruyi.plugins.teacache import TeaCache

__all__ = ["EnhanceAVideo", "LoRAWeights", "TeaCache", "enhance_factor", "read_lora"]
