"""Camera and motion control through the checkpoint's precomputed text embeddings.

Ruyi ships no text encoder: ``embeddings.safetensors`` holds, for every control combination, the
two text-encoder outputs it was trained with. Keys are ``p.<aspect>movie<motion><camera>.<field>``
for the positive branch (``auto`` motion is ``0``) and ``n.default.<field>`` for the negative; a
missing positive field falls back to ``p.default.<field>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ruyi.errors import CheckpointError, ConfigError
from ruyi.registry import CONDITIONINGS

FIELDS = ("emb1", "mask1", "emb2", "mask2")
# the control vocabulary of Ruyi-Mini-7B's embeddings table (film convention: camera=left means the
# camera moves left, so the picture's content moves right)
CAMERAS = ("static", "left", "right", "up", "down", "auto")
MOTIONS = ("1", "2", "3", "4", "auto")


@dataclass(frozen=True)
class TextEmbeddings:
    """One branch's text conditioning.

    emb1 (1, text_len, cross_attention_dim) with mask1 (1, text_len);
    emb2 (1, text_len_t5, cross_attention_dim_t5) with mask2 (1, text_len_t5).
    """

    emb1: torch.Tensor
    mask1: torch.Tensor
    emb2: torch.Tensor
    mask2: torch.Tensor


@dataclass(frozen=True)
class ControlEmbeddings:
    positive: TextEmbeddings
    negative: TextEmbeddings
    key: str  # the positive key asked for, e.g. "p.16x9movie2left"

    def transformer_inputs(self, *, guidance: bool, device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """This conditioning's part of :class:`~ruyi.models.transformer.inputs.TransformerInputs`:
        the two text-encoder states and masks, batch [negative; positive] with guidance."""
        def branch(field: str) -> torch.Tensor:
            positive = getattr(self.positive, field)
            return (torch.cat([getattr(self.negative, field), positive]) if guidance else positive).to(device)

        return {
            "encoder_hidden_states": branch("emb1").to(dtype), "text_embedding_mask": branch("mask1"),
            "encoder_hidden_states_t5": branch("emb2").to(dtype), "text_embedding_mask_t5": branch("mask2"),
        }  # fmt: skip


@CONDITIONINGS.register("camera_motion")
class CameraMotionControl:
    """Select the control embeddings for ``camera`` and ``motion``."""

    def __init__(
        self,
        *,
        file: str = "embeddings.safetensors",
        aspect: str = "16x9",
        cameras: Sequence[str] = CAMERAS,
        motions: Sequence[str] = MOTIONS,
    ) -> None:
        self.file = file
        self.aspect = aspect
        self.cameras = tuple(str(c) for c in cameras)
        self.motions = tuple(str(m) for m in motions)
        self._table: Mapping[str, torch.Tensor] | None = None

    def check_choice(self, camera: str, motion: str | int) -> None:
        """Fail early, listing the allowed values, on an unknown camera or motion."""
        if str(camera) not in self.cameras:
            raise ConfigError(f"camera={camera!r} is not one of {', '.join(self.cameras)}")
        if str(motion) not in self.motions:
            raise ConfigError(f"motion={motion!r} is not one of {', '.join(self.motions)}")

    def load(self, model_path: str | Path) -> None:
        """Read the checkpoint's table of control embeddings."""
        path = Path(model_path) / self.file
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the checkpoint's control embeddings must be there")
        try:
            self._table = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise CheckpointError(f"cannot read {path} ({type(err).__name__}: {err}); re-download it") from None

    def use_table(self, table: Mapping[str, torch.Tensor]) -> None:
        """Use an in-memory table (random-weight pipelines: benchmarks, tests)."""
        self._table = dict(table)

    def key(self, camera: str, motion: str | int) -> str:
        self.check_choice(camera, motion)
        motion_id = "0" if str(motion) == "auto" else str(motion)
        return f"p.{self.aspect}movie{motion_id}{camera}"

    def select(self, camera: str, motion: str | int) -> ControlEmbeddings:
        if self._table is None:
            raise RuntimeError("call load(model_path) before select()")
        key = self.key(camera, motion)
        table = self._table

        def fields(prefix: str, fallback: str) -> TextEmbeddings:
            return TextEmbeddings(**{f: table.get(f"{prefix}.{f}", table.get(f"{fallback}.{f}")) for f in FIELDS})

        positive, negative = fields(key, "p.default"), fields("n.default", "n.default")
        missing = [f for f in FIELDS if getattr(positive, f) is None or getattr(negative, f) is None]
        if missing:
            raise CheckpointError(f"{self.file} lacks the default fields {missing}; re-download it")
        return ControlEmbeddings(positive=positive, negative=negative, key=key)
