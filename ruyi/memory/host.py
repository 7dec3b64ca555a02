"""Host RAM of a plan: what a PC with 16-32 GB of RAM must hold beside the GPU's share.

``memory=auto`` predicts the process's peak resident memory for each candidate from the parts that
scale (GiB, the 7B at its real shape unless the preset says otherwise):

- the process itself: torch, the CUDA context and the libraries (``BASE_GIB``, measured once);
- the transformer's weights, in the bytes they are kept in (``transformer_gib``): the pipeline's
  dtype, or FP8 for the layers a storage mode (``precision=fp8_*``) converts
  (:func:`stored_share`: 0.73 of the bf16 bytes for ``fp8_lite``, 0.53 ``fp8_strong``, 0.50
  ``fp8_extreme`` on the 7B). A placement that streams them says how many copies stay in host
  memory (``GroupOffload.host_copies``): one (loaded straight into their pinned or plain place,
  :mod:`ruyi.models.in_place`), none with ``disk``; the others keep none (``offload=none`` moves
  them to the GPU);
- the weights while loading: a streamed transformer goes straight into those copies (a disk one
  passes through one group at a time: nothing counted); any other passes through host memory once in
  the pipeline's dtype (``from_pretrained``); the VAE and the image encoder always do;
- the VAE and image encoder while running (``other_host_copies``): streamed by ``offload=group``
  from host memory like the transformer, they are kept loaded plus the pinned copy the hooks make
  (two), one with ``low_cpu_mem_usage``, none on disk; other placements count them once;
- the long skips parked by ``skip_steps`` (half the layers' outputs at every token, in the
  pipeline's dtype; one guidance half at a time under ``cfg_split``);
- the decoded video assembled on the host by ``vae_stream`` (float32).

The peak is the larger of the loading peak and the running one. Rows measured on a GPU replace the
prediction where they exist (``Rule.host_gib``); the prediction is labelled as such in the log.
The numbers count what the process holds, not the operating system's file cache (a checkpoint read
through a memory map is counted by ``ru_maxrss`` while mapped, but is dropped before anything else).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruyi.models.transformer.inputs import LatentGrid

GIB = 1024**3
BASE_GIB = 3.0  # torch + CUDA context + libraries of one inference process (benchmarks/RESULTS.md)


@dataclass(frozen=True)
class ModelBytes:
    """The sizes the host plan needs, from the preset's architecture."""

    transformer_params: float
    other_params: float  # VAE + image encoder
    hidden: int
    layers: int
    patch: int

    @classmethod
    def of(cls, arch: Mapping[str, Any] | None, checkpoint: str | os.PathLike | None = None) -> ModelBytes:
        """From the preset's ``transformer_arch``, else the checkpoint's ``transformer/config.json``,
        else the 7B's sizes."""
        t = dict((arch or {}).get("transformer_arch") or {})
        config = None if checkpoint is None else Path(checkpoint) / "transformer" / "config.json"
        if not t and config is not None and config.is_file():
            t = json.loads(config.read_text())
        hidden = int(t.get("hidden_size", 2816))
        layers = int(t.get("num_layers", 40))
        mlp = float(t.get("mlp_ratio", 4.3637))
        # per block: attention (4 h^2, self + cross share the shape) x2, MLP 2 * mlp * h^2, norms/ada ~6 h^2
        per_block = (8 + 2 * mlp + 6) * hidden * hidden
        params = per_block * layers
        if not t:  # the 7B: its counted size
            params = 7.19e9
        image = dict((arch or {}).get("image_encoder_arch") or {})
        other = 0.4e9 if not image else 12 * int(image.get("hidden_size", 1024)) ** 2 * int(image.get("num_hidden_layers", 24)) + 0.1e9
        return cls(params, other, hidden, layers, int(t.get("patch_size", 2)))


def host_peak_gib(
    *, model: ModelBytes, dtype_bytes: int, side: float, frames: int, host_copies: float,
    skip_steps: int, cfg_split: bool, vae_stream: bool, streams: bool = False,
    other_copies: float = 1.0, stored_share: float = 1.0,
) -> float:  # fmt: skip
    """The predicted peak resident host memory (GiB) of one run (module docstring).

    ``host_copies``: copies of the transformer kept in host memory while running; ``streams``:
    whether the placement loads it straight into them (``loads_in_place``); ``other_copies``: copies
    of the VAE and the image encoder while running; ``stored_share``: the transformer's kept bytes
    over its bytes in the pipeline's dtype (:func:`stored_share`)."""
    full = model.transformer_params * dtype_bytes / GIB
    transformer = full * stored_share
    others = model.other_params * dtype_bytes / GIB
    load = BASE_GIB + (host_copies * transformer if streams else full) + others
    grid = LatentGrid.of_video(frames, round(side), round(side), patch_size=model.patch)
    tokens = grid.tokens
    skips = 0.0
    if skip_steps:
        halves = 1 if cfg_split else 2
        skips = (model.layers // 2) * tokens * model.hidden * dtype_bytes * halves / GIB
    video = frames * side * side * 3 * 4 / GIB if vae_stream else 0.0
    running = BASE_GIB + host_copies * transformer + other_copies * others + skips + video
    return max(load, running)


def stored_share(transformer: Any, precision: Any, dtype_bytes: int) -> float:
    """The transformer's bytes as ``precision`` stores them over its bytes in the pipeline's dtype
    (``dtype_bytes`` per weight; ``transformer``: the model, on the meta device is enough; 1.0 for a
    precision without ``stored_as``)."""
    stored_as = getattr(precision, "stored_as", None)
    changed = stored_as(transformer) if stored_as is not None else {}
    params = dict(transformer.named_parameters())
    full = sum(p.numel() for p in params.values())
    if not changed or not full:
        return 1.0
    kept = sum(p.numel() * (changed[n].itemsize / dtype_bytes if n in changed else 1.0) for n, p in params.items())
    return kept / full


def host_ram_gib() -> float:
    """Physical memory of this machine (GiB)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no host plan
        return float("inf")
