"""Camera and motion control through the checkpoint's precomputed text embeddings, and the one
camera/motion vocabulary of ruyi.

Ruyi ships no text encoder: ``embeddings.safetensors`` holds, for every control combination, the
two text-encoder outputs it was trained with. Keys are ``p.<aspect>movie<motion><camera>.<field>``
for the positive branch (``auto`` motion is ``0``) and ``n.default.<field>`` for the negative; a
missing positive field falls back to ``p.default.<field>``.

The labels a model accepts are the rows its table has: Ruyi-Mini-7B's (``CAMERAS``, ``MOTIONS``)
plus any that ``finetune=control`` taught it (``zoom_in``...). ``MOVES`` says what each camera move
does to the picture, for the code that draws moves (``ruyi.training.data.procedural``) and the
code that measures them (``ruyi.eval.motion``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ruyi.errors import CheckpointError, ConfigError, InputError
from ruyi.registry import CONDITIONINGS

FIELDS = ("emb1", "mask1", "emb2", "mask2")
AUTO = "auto"


@dataclass(frozen=True)
class CameraMove:
    """What a camera move does to the picture's content each frame, in units of its speed: a
    shift (dx, dy) and a zoom sign (+1: the content grows from the frame's centre)."""

    dx: int = 0
    dy: int = 0
    zoom: int = 0


# Film convention: camera=left moves the camera left, so the content moves right (+x); camera=up
# moves the content down (+y); zoom_in enlarges it.
MOVES = {
    "static": CameraMove(), "left": CameraMove(dx=1), "right": CameraMove(dx=-1), "up": CameraMove(dy=1),
    "down": CameraMove(dy=-1), "zoom_in": CameraMove(zoom=1), "zoom_out": CameraMove(zoom=-1),
}  # fmt: skip
PANS = ("static", "left", "right", "up", "down")
ZOOMS = ("zoom_in", "zoom_out")
# the labels of Ruyi-Mini-7B's table, in its order
CAMERAS = (*PANS, AUTO)
MOTIONS = ("1", "2", "3", "4", AUTO)
LABEL = re.compile(r"[a-z][a-z0-9_]*\Z")  # a camera label that a table key can hold unambiguously
ORIGINAL = "Ruyi-Mini-7B's table"


def motion_id(motion: str | int) -> str:
    """The motion's digit in a table key (``auto`` is 0)."""
    return "0" if str(motion) == AUTO else str(motion)


def row_key(camera: str, motion: str | int, aspect: str = "16x9") -> str:
    """The table key prefix of one positive row, e.g. ``p.16x9movie2left``."""
    return f"p.{aspect}movie{motion_id(motion)}{camera}"


def ordered(cameras: Iterable[str]) -> tuple[str, ...]:
    """Camera labels in the vocabulary's order: the known moves, then others sorted, ``auto`` last."""
    labels = set(cameras)
    known = [c for c in MOVES if c in labels]
    return (*known, *sorted(labels - set(MOVES) - {AUTO}), *([AUTO] if AUTO in labels else []))


def table_labels(keys: Iterable[str], aspect: str = "16x9") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(cameras, motions) that a table's keys have rows for (motions 1-9, ``auto`` for 0)."""
    prefix = f"p.{aspect}movie"
    cameras, motions = set(), set()
    for key in keys:
        row = key.rpartition(".")[0]
        if row.startswith(prefix) and len(row) > len(prefix) + 1 and row[len(prefix)].isdigit():
            motions.add(row[len(prefix)])
            cameras.add(row[len(prefix) + 1 :])
    return ordered(cameras), (*sorted(m for m in motions if m != "0"), *([AUTO] if "0" in motions else []))


def check_label(camera: str, where: str) -> str:
    if not isinstance(camera, str) or not LABEL.match(camera) or camera == AUTO:
        raise ConfigError(f"{where}: {camera!r} cannot be a camera label; use lower-case letters, digits and _ (e.g. zoom_in)")
    return camera


def random_control_table(arch: Mapping[str, Any], generator: torch.Generator, *, cameras: Iterable[str] = CAMERAS,
                         aspect: str = "16x9") -> dict[str, torch.Tensor]:  # fmt: skip
    """A random table with every key Ruyi-Mini-7B's has (or ``cameras``' rows), for ``arch``'s sizes."""
    text_len, text_len_t5 = arch["text_len"], arch["text_len_t5"]
    dim, dim_t5 = arch["cross_attention_dim"], arch["cross_attention_dim_t5"]

    def entry(prefix: str) -> dict[str, torch.Tensor]:
        valid1 = int(torch.randint(1, text_len + 1, (1,), generator=generator))
        valid2 = int(torch.randint(1, text_len_t5 + 1, (1,), generator=generator))
        return {
            f"{prefix}.emb1": torch.randn(1, text_len, dim, generator=generator),
            f"{prefix}.mask1": (torch.arange(text_len) < valid1).long()[None],
            f"{prefix}.emb2": torch.randn(1, text_len_t5, dim_t5, generator=generator),
            f"{prefix}.mask2": (torch.arange(text_len_t5) < valid2).long()[None],
        }

    table = {**entry("p.default"), **entry("n.default")}
    for motion in (AUTO, *MOTIONS[:-1]):
        for camera in cameras:
            table.update(entry(row_key(camera, motion, aspect)))
    return table


def header_keys(path: Path, what: str) -> list[str]:
    """The tensor names of a safetensors file, read from its header alone (no weights)."""
    try:
        with safe_open(str(path), framework="np") as f:
            return list(f.keys())
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise CheckpointError(f"cannot read {path} ({type(err).__name__}: {err}); {what}") from None


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
    """Select the control embeddings for ``camera`` and ``motion``; the labels are the table's.

    ``extra_rows``: an ``embeddings.safetensors`` (``finetune=control``'s output) whose new rows are
    added to the checkpoint's; rows both have must be identical.
    """

    def __init__(self, *, file: str = "embeddings.safetensors", aspect: str = "16x9", extra_rows: str | None = None) -> None:
        self.file = file
        self.aspect = aspect
        self.extra_rows = None if extra_rows in (None, "") else Path(str(extra_rows)).expanduser()
        # until a table is read, the original's labels (a checkpoint that is yet to be made has them)
        self.cameras, self.motions, self.source = CAMERAS, MOTIONS, ORIGINAL
        self._table: dict[str, torch.Tensor] | None = None

    def check_choice(self, camera: str, motion: str | int) -> None:
        """Fail early, naming the labels the model has, on an unknown camera or motion."""
        if str(camera) not in self.cameras:
            raise ConfigError(f"camera={camera!r} is not one of {', '.join(self.cameras)} (the labels of {self.source})")
        if str(motion) not in self.motions:
            raise ConfigError(f"motion={motion!r} is not one of {', '.join(self.motions)} (the labels of {self.source})")

    # -- the vocabulary, from table headers (no weights) --------------------------------------
    def _files(self, model_path: str | Path | None) -> list[Path]:
        files = [] if model_path is None else [Path(model_path) / self.file]
        return files + ([self.extra_rows] if self.extra_rows is not None else [])

    def read_labels(self, model_path: str | Path | None) -> tuple[str, ...]:
        """Take the camera and motion labels from the checkpoint's table and ``extra_rows`` (their
        headers only); a checkpoint not made yet keeps the original's. Returns the cameras."""
        if self.extra_rows is not None and not self.extra_rows.is_file():
            raise InputError(
                f"conditioning.control.extra_rows={self.extra_rows} is not a file; give the embeddings.safetensors "
                "that finetune=control wrote"
            )
        files = [f for f in self._files(model_path) if f.is_file()]
        if files:
            keys = [k for f in files for k in header_keys(f, "re-download it or train it again")]
            if model_path is None or not (Path(model_path) / self.file).is_file():  # made later with the original's rows
                keys += [f"{row_key(c, m, self.aspect)}.emb1" for c in CAMERAS for m in MOTIONS]
            self._set_labels(keys, files)
        return self.cameras

    def _set_labels(self, keys: Iterable[str], files: list[Path] | None) -> None:
        cameras, motions = table_labels(keys, self.aspect)
        if cameras:
            self.cameras, self.motions = cameras, motions
            self.source = " + ".join(str(f) for f in files) if files else "the in-memory table"

    # -- the table ------------------------------------------------------------------------------
    def load(self, model_path: str | Path) -> None:
        """Read the checkpoint's table of control embeddings (and ``extra_rows`` on top)."""
        path = Path(model_path) / self.file
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the checkpoint's control embeddings must be there")
        table = self._read(path, "re-download it")
        if self.extra_rows is not None:
            table = add_rows(table, self._read(self.extra_rows, "train it again"), where=str(self.extra_rows))
        self._table = table
        self._set_labels(table, self._files(model_path))

    @staticmethod
    def _read(path: Path, fix: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise CheckpointError(f"cannot read {path} ({type(err).__name__}: {err}); {fix}") from None

    def use_table(self, table: Mapping[str, torch.Tensor]) -> None:
        """Use an in-memory table (random-weight pipelines: benchmarks, tests; training's new rows)."""
        self._table = dict(table)
        self._set_labels(self._table, None)

    @property
    def table(self) -> dict[str, torch.Tensor]:
        if self._table is None:
            raise RuntimeError("call load(model_path) or use_table(table) first")
        return self._table

    def key(self, camera: str, motion: str | int) -> str:
        self.check_choice(camera, motion)
        return row_key(camera, motion, self.aspect)

    def select(self, camera: str, motion: str | int) -> ControlEmbeddings:
        table = self.table
        key = self.key(camera, motion)

        def fields(prefix: str, fallback: str) -> TextEmbeddings:
            return TextEmbeddings(**{f: table.get(f"{prefix}.{f}", table.get(f"{fallback}.{f}")) for f in FIELDS})

        positive, negative = fields(key, "p.default"), fields("n.default", "n.default")
        missing = [f for f in FIELDS if getattr(positive, f) is None or getattr(negative, f) is None]
        if missing:
            raise CheckpointError(f"{self.file} lacks the default fields {missing}; re-download it")
        return ControlEmbeddings(positive=positive, negative=negative, key=key)


def add_rows(table: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor], *, where: str) -> dict[str, torch.Tensor]:
    """``table`` with ``extra``'s rows added. A row both have must be identical and a new row must
    have the table's shapes: another model's rows are refused in one line."""
    out = dict(table)
    for key, tensor in extra.items():
        field = key.rpartition(".")[2]
        if key in table:
            if table[key].shape != tensor.shape or not torch.equal(table[key], tensor.to(table[key].dtype)):
                raise InputError(f"{where}: {key} differs from the checkpoint's; these rows were made for another model")
            continue
        like = table.get(f"p.default.{field}")
        if like is not None and like.shape != tensor.shape:
            raise InputError(
                f"{where}: {key} has shape {list(tensor.shape)}, this model's rows {list(like.shape)}; "
                "these rows were made for another model"
            )
        out[key] = tensor
    return out
