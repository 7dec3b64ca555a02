"""What is trained and how the result is written: LoRA through peft, or every transformer weight.

A finetune method is a registered class (``configs/finetune/<name>.yaml``) with
``prepare(transformer)`` (makes the trainable parameters), ``checkpoint_state(state)`` (what a
Lightning checkpoint keeps) and ``export(state, source=..., output_dir=..., base_model=...)`` (the file or folder
inference loads). ``state`` is the transformer's full state dict, as every strategy (single device,
DDP, FSDP with a full state dict) can hand it over on rank 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ruyi.checks import check_number
from ruyi.errors import ConfigError
from ruyi.registry import FINETUNES
from ruyi.training.export import export_checkpoint, save_safetensors

log = logging.getLogger(__name__)

# Attention and feed-forward linears of every block (self, text and CLIP attention). Not peft's
# "all-linear": that also wraps time_extra_emb.pooler.*_proj and clip_projection.attn.out_proj,
# whose weights are read directly (their forward never runs), so a merged model would then differ
# from the trained one.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
ADAPTER = "default"
LORA_A, LORA_B = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"save_dtype={name!r} is not one of {', '.join(DTYPES)}") from None


@FINETUNES.register("lora")
class LoRAFinetune:
    """peft LoRA (rank ``rank``, scale ``alpha / rank``) on ``target_modules``; the rest is frozen.

    Exported as ``lora.safetensors`` in the original Ruyi key format (``lora_unet_<path with . -> _>``
    ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``), which ``infer.py lora=[...]``, the
    Python API and the ComfyUI LoRA node merge.
    """

    file_name = "lora.safetensors"

    def __init__(
        self,
        *,
        rank: int = 16,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] = LORA_TARGETS,
        use_rslora: bool = False,
        save_dtype: str = "float32",
    ) -> None:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ConfigError(f"finetune.rank={rank!r} must be a positive integer (e.g. 16)")
        alpha = check_number("finetune.alpha", alpha, low=0, low_open=True, high=1e6, hint="alpha = rank gives scale 1")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"finetune.dropout={dropout!r} must lie in [0, 1)")
        if isinstance(target_modules, str) or not target_modules:
            raise ConfigError("finetune.target_modules must be a non-empty list of module names, e.g. [to_q, to_k]")
        self.rank, self.alpha, self.dropout = rank, float(alpha), float(dropout)
        self.target_modules = tuple(str(t) for t in target_modules)
        self.use_rslora = bool(use_rslora)
        self.save_dtype = _dtype(save_dtype)

    def __repr__(self) -> str:
        return f"LoRAFinetune(rank={self.rank}, alpha={self.alpha}, targets={list(self.target_modules)})"

    @property
    def scale(self) -> float:
        """peft's ``scaling``: the factor of ``B @ A`` in the effective weight."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(self.target_modules),
            use_rslora=self.use_rslora, init_lora_weights=True,
        )  # fmt: skip

    def prepare(self, transformer: torch.nn.Module) -> None:
        transformer.requires_grad_(False)
        add_adapter = getattr(transformer, "add_adapter", None)  # diffusers' PeftAdapterMixin
        if add_adapter is not None:
            add_adapter(self.peft_config(), adapter_name=ADAPTER)
        else:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(self.peft_config(), transformer, adapter_name=ADAPTER)
        wrapped = [n for n, p in transformer.named_parameters() if "lora_" in n]
        for name, param in transformer.named_parameters():
            param.requires_grad_("lora_" in name)
        log.info("LoRA rank %d on %d layers (%s)", self.rank, len(wrapped) // 2, ", ".join(self.target_modules))

    @staticmethod
    def checkpoint_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Only the adapter: the frozen base weights are in the checkpoint folder already."""
        return {k: v for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}

    def lora_tensors(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """peft's state dict -> the original Ruyi LoRA keys (``alpha = scale * rank`` per layer)."""
        out: dict[str, torch.Tensor] = {}
        for key, down in state.items():
            if not key.endswith(LORA_A):
                continue
            path = key[: -len(LORA_A)]
            up = state[path + LORA_B]
            name = "lora_unet_" + path.replace(".", "_")
            out[f"{name}.lora_down.weight"] = down.detach().to("cpu", self.save_dtype).contiguous()
            out[f"{name}.lora_up.weight"] = up.detach().to("cpu", self.save_dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(self.scale * down.shape[0], dtype=torch.float32)
        if not out:
            raise ConfigError("the transformer holds no LoRA weights to export; was finetune=lora applied?")
        return out

    def export(
        self, state: Mapping[str, torch.Tensor], *, source: Path, output_dir: Path, base_model: Mapping[str, str] | None = None
    ) -> Path:
        """``lora.safetensors``; its header records the base model (``ruyi.plugins.lora.base_model_metadata``),
        so inference with another model says which ``model=`` the LoRA was made for."""
        path = Path(output_dir) / self.file_name
        meta = {"ss_network_dim": str(self.rank), "ss_network_alpha": str(self.alpha), "ruyi_base_model": str(source),
                **dict(base_model or {})}  # fmt: skip
        save_safetensors(self.lora_tensors(state), path, metadata=meta)
        return path


@FINETUNES.register("full")
class FullFinetune:
    """Every transformer weight trains; exported as a complete checkpoint folder (``checkpoint/``)
    that ``model.path=`` loads: the trained transformer plus the source's other components."""

    file_name = "checkpoint"

    def __init__(self, *, save_dtype: str | None = None) -> None:
        self.save_dtype = None if save_dtype is None else _dtype(save_dtype)

    def __repr__(self) -> str:
        return "FullFinetune()"

    def prepare(self, transformer: torch.nn.Module) -> None:
        transformer.requires_grad_(True)

    @staticmethod
    def checkpoint_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(state)

    def export(
        self, state: Mapping[str, torch.Tensor], *, source: Path, output_dir: Path, base_model: Mapping[str, str] | None = None
    ) -> Path:
        # a full checkpoint carries its own config.json: nothing to record about the base model
        return export_checkpoint(state, source=source, folder=Path(output_dir) / self.file_name, dtype=self.save_dtype)
