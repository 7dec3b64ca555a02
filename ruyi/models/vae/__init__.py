"""The MagViT 3D VAE of Ruyi-Mini-7B."""

from ruyi.models.vae.autoencoder import MagvitVAE3D

__all__ = ["MagvitVAE3D"]
