"""ruyi: a plugin-style, Hydra-configured framework for the Ruyi-Mini-7B image-to-video model."""

__version__ = "0.1.0"
