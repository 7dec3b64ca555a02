"""Memory options: how much activation memory the pipeline holds, never what it computes.

Registered in ``MEMORIES`` and chosen with the ``memory`` config group (``configs/memory/``);
they attach at the ``memory`` stage of ``ruyi.assembly`` (before the skip parking, VAE tiling and
offload) as diffusers hooks on the forwards they change (``vae_stream``: the VAE's host-output
switch) and come off again with ``remove(pipe)``:

- ``cfg_split``: classifier-free guidance as batch-1 passes (per block or per transformer call);
- ``token_chunks``: feed-forward, norms/modulation, cross-attention and long-skip merge over
  slices of tokens;
- ``inplace``: the rotary embedding's float32 maths in slices, the feed-forward GELU in place;
- ``vae_stream``: the decoded video assembled in host memory piece by piece;
- ``combo``: several of the above; ``auto``: picks offload, long-skip parking, VAE tiles and
  these options from the free GPU memory and measured rules (``ruyi.memory.rules``).
"""

from ruyi.memory.auto import MemoryAuto
from ruyi.memory.base import MemoryOption
from ruyi.memory.chunking import TokenChunks
from ruyi.memory.combo import MemoryCombo
from ruyi.memory.guidance import GuidanceSplit
from ruyi.memory.inplace import InPlace
from ruyi.memory.vae import DecodeToHost

__all__ = [
    "DecodeToHost",
    "GuidanceSplit",
    "InPlace",
    "MemoryAuto",
    "MemoryCombo",
    "MemoryOption",
    "TokenChunks",
]
