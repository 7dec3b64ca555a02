"""The decoded video goes to host memory piece by piece instead of being assembled on the GPU.

What the VAE already does (``ruyi.models.vae.autoencoder``): decoding runs in temporal
mini-batches of 2 latent frames (8 video frames) with a causal cache between them, encoding in
8-frame mini-batches; spatial tiles split each mini-batch further. Temporal chunks finer than a
mini-batch would not be exact (the temporal upsampler interpolates inside a mini-batch and the
GroupNorms take statistics over its frames), so there is no finer temporal chunking to add.

What still covers the whole video on the GPU is the output: the decoded video (and, tiled, its
float32 blending accumulator), then the pipeline's clamp and rescale copies of it. At 768 x 768
x 120 frames that is 0.4 GiB per bf16 copy and 0.8 GiB for float32, 1.3-2 GiB in all at the end
of decoding. With this option each decoded piece is copied out as soon as it is made, the
blending adds happen in host memory, and the pipeline's post-processing runs on the host too.
The values are those of the VAE's own decode (the same float32 blend, the same order).

It is the VAE's ``enable_host_output()`` switch (``ruyi.models.vae.output`` says why a switch and
not a hook: ``decode`` is no ``forward``); a VAE that decodes in one piece (``pixel_patch``) moves
its video to the host whole.
"""

from __future__ import annotations

from ruyi.memory.base import MemoryOption
from ruyi.registry import MEMORIES


@MEMORIES.register("vae_stream")
class DecodeToHost(MemoryOption):
    def apply(self, pipe) -> None:
        vae = pipe.vae
        if not callable(getattr(vae, "enable_host_output", None)):
            raise TypeError(
                f"{type(vae).__name__} has no enable_host_output(): memory=vae_stream cannot apply"
            )
        vae.enable_host_output()

    def remove(self, pipe) -> None:
        pipe.vae.disable_host_output()
