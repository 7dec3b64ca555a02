"""A checkpoint's ``config.json`` checked before any module is built from it.

Building a model from its config allocates (even on the meta device, a module per layer): a
damaged or foreign ``config.json`` with ``num_layers: 1e9`` would build for minutes before any
check could run. So every size a model is built from is first held to sane bounds, then compared
with what the safetensors headers say (shapes only, no tensor is read): a config of one model
beside the weights of another fails in one line naming the key and both values.

The tables are keyed by registry name (``ruyi_transformer3d``, ``magvit``, ``pixel_patch``,
``clip_vision``); a class they do not list (a user's own) is checked by its own loader only.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ruyi.errors import CheckpointError
from ruyi.models.loading import read_headers

Headers = Mapping[str, tuple[tuple[int, ...], str]]
# key -> (lowest, highest): integers unless the bound is a float. Generous: the 7B is far inside
# (40 layers, 32 heads of 88, 2816 wide); the point is to stop nonsense, not to fence in new models.
BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "ruyi_transformer3d": {
        "num_layers": (1, 512), "num_attention_heads": (1, 1024), "attention_head_dim": (1, 2048),
        "hidden_size": (1, 65536), "in_channels": (1, 4096), "out_channels": (1, 4096), "patch_size": (1, 64),
        "cross_attention_dim": (1, 65536), "cross_attention_dim_t5": (1, 65536), "text_len": (1, 65536),
        "text_len_t5": (1, 65536), "n_query": (1, 65536), "projection_dim": (1, 65536),
        "pooled_projection_dim": (1, 65536), "sample_size": (1, 65536), "mlp_ratio": (1e-3, 64.0),
    },
    "magvit": {
        "in_channels": (1, 64), "out_channels": (1, 64), "ch": (1, 16384), "layers_per_block": (1, 64),
        "latent_channels": (1, 4096), "mid_block_num_attention_heads": (1, 1024), "norm_num_groups": (1, 4096),
        "mini_batch_encoder": (1, 1024), "mini_batch_decoder": (1, 1024), "ch_mult": (1, 64),
        "block_out_channels": (1, 65536),
    },
    "pixel_patch": {"in_channels": (1, 64), "out_channels": (1, 64)},
    "clip_vision": {
        "hidden_size": (1, 65536), "intermediate_size": (1, 262144), "num_hidden_layers": (1, 512),
        "num_attention_heads": (1, 1024), "image_size": (1, 16384), "patch_size": (1, 4096),
        "projection_dim": (1, 65536), "num_channels": (1, 64),
    },
}  # fmt: skip
MAX_LIST = 32  # entries of a per-stage list (ch_mult, block_out_channels)


def _count(pattern: str) -> Callable[[Headers], tuple[int, str] | None]:
    """The number of numbered blocks: 1 + the highest index the pattern finds in the tensor names."""
    regex = re.compile(pattern)

    def fact(headers: Headers) -> tuple[int, str] | None:
        found = [int(m.group(1)) for name in headers if (m := regex.match(name))]
        return (max(found) + 1, f"the weights number their blocks up to {max(found)}") if found else None

    return fact


def _dim(tensor: str, axis: int) -> Callable[[Headers], tuple[int, str] | None]:
    def fact(headers: Headers) -> tuple[int, str] | None:
        if tensor not in headers or len(headers[tensor][0]) <= axis:
            return None
        shape = headers[tensor][0]
        return shape[axis], f"{tensor} is {list(shape)}"

    return fact


# config key -> where the safetensors headers say the same thing
HEADER_FACTS: dict[str, dict[str, Callable[[Headers], tuple[int, str] | None]]] = {
    "ruyi_transformer3d": {
        "num_layers": _count(r"blocks\.(\d+)\."), "hidden_size": _dim("pos_embed.proj.weight", 0),
        "in_channels": _dim("pos_embed.proj.weight", 1), "patch_size": _dim("pos_embed.proj.weight", 2),
        "attention_head_dim": _dim("blocks.0.attn1.norm_k.weight", 0),
    },
    "magvit": {
        "in_channels": _dim("encoder.conv_in.weight", 1), "out_channels": _dim("decoder.conv_out.weight", 0),
        "latent_channels": _dim("post_quant_conv.weight", 0),
    },
    "clip_vision": {
        "num_hidden_layers": _count(r"vision_model\.encoder\.layers\.(\d+)\."),
        "hidden_size": _dim("vision_model.embeddings.class_embedding", 0),
        "intermediate_size": _dim("vision_model.encoder.layers.0.mlp.fc1.weight", 0),
        "patch_size": _dim("vision_model.embeddings.patch_embedding.weight", 2),
        "num_channels": _dim("vision_model.embeddings.patch_embedding.weight", 1),
        "projection_dim": _dim("visual_projection.weight", 0),
    },
}  # fmt: skip


def check_model_config(cls: type, config: Mapping[str, Any], folder: str | Path) -> None:
    """Bounds first (no file is read), then the headers of ``folder``'s weights (no tensor is read)."""
    name = getattr(cls, "registry_name", None)
    where = Path(folder) / "config.json"
    for key, (low, high) in BOUNDS.get(name, {}).items():
        if key in config and config[key] is not None:
            _check_bound(where, key, config[key], low, high)
    facts = HEADER_FACTS.get(name)
    if not facts:
        return
    headers = read_headers(folder)
    for key, fact in facts.items():
        found = fact(headers)
        if found is None or key not in config:
            continue  # a tensor this layout does not have: check_weights compares the rest
        value, because = found
        if config[key] != value:
            raise CheckpointError(
                f"{where} says {key}={config[key]!r} but the weights say {key}={value} ({because}); the config and "
                "the weights are of different models: re-download the checkpoint or fix config.json"
            )


def _check_bound(where: Path, key: str, value: Any, low: float, high: float) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and not 1 <= len(value) <= MAX_LIST:
        raise CheckpointError(f"{where}: {key} has {len(value)} entries (1 to {MAX_LIST} expected); re-download it")
    integer = isinstance(low, int) and isinstance(high, int)
    for item in values:
        kind_ok = isinstance(item, numbers.Integral if integer else numbers.Real) and not isinstance(item, bool)
        if not kind_ok or not low <= item <= high:
            shown = f"{key}={value!r}"
            what = "an integer" if integer else "a number"
            raise CheckpointError(
                f"{where}: {shown} must be {what} in [{low}, {high}]; the file is damaged or not a config of this "
                "model: re-download the checkpoint or fix config.json"
            )
