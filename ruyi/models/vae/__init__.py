"""The MagViT 3D VAE of Ruyi-Mini-7B."""

from ruyi.models.vae.autoencoder import MagvitVAE3D
from ruyi.models.vae.tiling import VAETiling

__all__ = ["MagvitVAE3D", "VAETiling"]
