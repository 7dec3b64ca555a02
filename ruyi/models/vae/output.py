"""Where a VAE hands its decoded video back: a switch like ``enable_tiling``, read by ``decode``.

``enable_host_output()`` makes ``decode`` (and ``decode_chunks``) move each decoded piece to host
memory as soon as it is made and assemble the video there (tiled: the float32 blending accumulator
too), so the whole video never sits in GPU memory; ``memory=vae_stream`` turns it on. Same values:
the pieces, the blend and its order are those of the device path.

Why a switch rather than a hook: ``decode`` is not a ``forward``, so no module hook wraps it, and a
hook on the decoder's forward would hand host pieces to the VAE's own blending, whose weights are
on the device, and could not reach a VAE without submodules (``pixel_patch``). Only the VAE knows
where its pieces are assembled, so the choice is read there, in one place.
"""

from __future__ import annotations

import torch

HOST = torch.device("cpu")


class HostOutputMixin:
    """``output_device``: None (the decoded video stays where it was computed) or the host."""

    output_device: torch.device | None = None

    def enable_host_output(self) -> None:
        """Decode into host memory piece by piece (see the module docstring)."""
        self.output_device = HOST

    def disable_host_output(self) -> None:
        """Back to returning the video where it was computed."""
        self.output_device = None

    def _to_output(self, video: torch.Tensor) -> torch.Tensor:
        return video if self.output_device is None else video.to(self.output_device)
