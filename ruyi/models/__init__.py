"""Models: tensors in, tensors out. Nothing here knows about sampling, offloading or Hydra."""
