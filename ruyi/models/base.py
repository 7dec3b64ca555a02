"""What Ruyi's checkpoint models share on top of diffusers' ``ModelMixin`` + ``ConfigMixin``.

The library does the loading, saving, casting, regional compile, gradient checkpointing and
adapters. This base only adds what the Ruyi-Mini-7B folders need:

- ``config.json`` keeps the original's class name (``HunyuanTransformer3DModel``,
  ``AutoencoderKLMagvit``), so a folder written by ``save_pretrained`` is a real checkpoint folder.
- Config fields the class does not take (the original's options for modes it never uses) are
  carried along and saved again, without diffusers' warning on every load.
- ``from_pretrained`` applies the class's ``config_overrides`` as the original loader does, and
  reads the safetensors headers first (``ruyi.models.loading.check_weights``): a wrong or
  incomplete folder fails with one line before diffusers reads any tensor. Before even the meta
  model is built, ``config.json``'s sizes are held to bounds and to the headers
  (``ruyi.models.config_checks``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from diffusers import ConfigMixin, ModelMixin

from ruyi.models.config_checks import check_model_config
from ruyi.models.loading import check_weights, meta_model, read_config

log = logging.getLogger(__name__)


class RuyiModelMixin(ModelMixin, ConfigMixin):
    """Base of the transformer and the VAE; subclasses set the three class attributes below."""

    # the ``_class_name`` the original code writes and expects in config.json
    checkpoint_class_name: ClassVar[str]
    # the folder of the model inside a Ruyi-Mini-7B checkpoint
    subfolder: ClassVar[str]
    # set on top of config.json when loading, as the original loader does
    config_overrides: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """diffusers' ``from_pretrained`` (safetensors only; ``dtype=``, ``subfolder=``, ...) with the
        class's ``config_overrides`` (explicit keyword arguments win) and the header check first."""
        kwargs = {**cls.config_overrides, **kwargs}
        kwargs.setdefault("use_safetensors", True)
        if "dtype" in kwargs:  # the spelling every diffusers release takes
            kwargs["torch_dtype"] = kwargs.pop("dtype")
        folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        # a hub id or a variant's file names are diffusers' business; local folders are checked
        if folder.is_dir() and kwargs.get("variant") is None:
            init_keys = cls._get_init_keys(cls)
            config = {**read_config(folder), **{k: v for k, v in kwargs.items() if k in init_keys}}
            check_model_config(cls, config, folder)  # sane sizes that fit the headers, before any module is built
            check_weights(folder, meta_model(cls, config, where=folder).state_dict())
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        known = cls._get_init_keys(cls)
        extra = {k: v for k, v in config_dict.items() if k not in known and not k.startswith("_")}
        if extra:
            log.debug("%s keeps config fields it does not use: %s", cls.__name__, sorted(extra))
        kept = {k: v for k, v in config_dict.items() if k not in extra}
        init_dict, unused, hidden = super().extract_init_dict(kept, **kwargs)
        # "hidden" fields are registered on the model's config, so save_pretrained writes them back
        return init_dict, {**extra, **unused}, {**extra, **hidden}

    def to_json_string(self) -> str:
        config = json.loads(super().to_json_string())
        config["_class_name"] = self.checkpoint_class_name
        return json.dumps(config, indent=2, sort_keys=True) + "\n"
