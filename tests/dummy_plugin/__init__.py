"""A component defined outside the package, as a user's plugin would be."""

from ruyi.registry import SAMPLERS
from ruyi.samplers.schedulers import DDIMSampler


@SAMPLERS.register("dummy_ddim")
class DummySampler(DDIMSampler):
    """DDIM with a marker, proving that a new sampler needs one file and one YAML."""

    label = "Dummy DDIM"

    def __init__(self, *, scheduler_config, marker: str = "unset", **kwargs):
        super().__init__(scheduler_config=scheduler_config, **kwargs)
        self.marker = marker
