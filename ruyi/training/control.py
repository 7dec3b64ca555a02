"""``finetune=control``: teach a model new camera labels (``zoom_in``...) from labelled clips.

The new labels are new rows of the checkpoint's control table (``embeddings.safetensors``): one
per (camera, motion) the model has, each starting as a copy of the ``init_from`` row of the same
motion (its masks stay that row's). The rows train as parameters of the LightningModule; the table
the pipeline reads holds the very same tensors, so the training step needs no other path. The old
rows and, unless ``lora`` is given, every weight stay frozen: the model does what it did before
for every label it had.

The export (``output_dir``):

- ``embeddings.safetensors``: the checkpoint's table with the new rows added, every old tensor
  copied unchanged; an add-on for the original checkpoint (``conditioning.control.extra_rows=``);
- ``lora.safetensors`` (with ``lora``): the LoRA, for ``lora=[{path: ...}]`` on the original;
- ``checkpoint/``: a complete checkpoint folder (``model.path=``) with the extended table, the
  transformer the source's (with ``lora``: the LoRA merged in).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ruyi.conditioning.control import AUTO, FIELDS, check_label, row_key
from ruyi.errors import ConfigError
from ruyi.registry import FINETUNES
from ruyi.training.export import export_checkpoint, save_safetensors

log = logging.getLogger(__name__)

TRAINED = ("emb1", "emb2")  # the masks say which tokens count: they stay the init row's


class ControlRows(torch.nn.Module):
    """The new rows' embeddings as parameters: ``tensors()`` -> {table key: tensor}, the masks included.

    rows: {row prefix (``p.16x9movie2zoom_in``): the prefix of the row it starts from}.
    """

    def __init__(self, table: Mapping[str, torch.Tensor], rows: Mapping[str, str]) -> None:
        super().__init__()
        self.rows = dict(rows)
        self.embeddings = torch.nn.ParameterDict({
            self._name(row, field): torch.nn.Parameter(table[f"{start}.{field}"].detach().float().clone())
            for row, start in self.rows.items() for field in TRAINED
        })  # fmt: skip
        self.masks = {f"{row}.{f}": table[f"{start}.{f}"].clone() for row, start in self.rows.items() for f in FIELDS
                      if f not in TRAINED}  # fmt: skip

    @staticmethod
    def _name(row: str, field: str) -> str:
        return f"{row}.{field}".replace(".", "__")  # a ParameterDict key holds no dot

    def tensors(self) -> dict[str, torch.Tensor]:
        """{table key: tensor} of every new row: the parameters themselves (gradients flow) and masks."""
        out = dict(self.masks)
        out.update({f"{row}.{field}": self.embeddings[self._name(row, field)] for row in self.rows for field in TRAINED})
        return out


@FINETUNES.register("control")
class ControlFinetune:
    """New control rows for ``cameras`` (and, with ``lora``, a LoRA); see the module's docstring.

    ``rows_learning_rate``: the rows' own learning rate (None: the run's ``learning_rate``); rows are
    few parameters that must move far, a LoRA on the 7B wants a small rate.
    """

    file_name = "embeddings.safetensors"
    strict_loading = False  # a Lightning checkpoint holds the rows (and adapter) only

    def __init__(
        self,
        *,
        cameras: Sequence[str],
        init_from: str = "static",
        rows_learning_rate: float | None = None,
        lora: Mapping[str, Any] | None = None,
        save_dtype: str | None = None,
    ) -> None:
        from ruyi.training.finetune import LoRAFinetune, _dtype

        if isinstance(cameras, str) or not cameras:
            raise ConfigError("finetune.cameras must list the new camera labels, e.g. [zoom_in, zoom_out]")
        self.cameras = tuple(check_label(str(c), "finetune.cameras") for c in cameras)
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"finetune.cameras={list(self.cameras)} names a label twice")
        self.init_from = str(init_from)
        if rows_learning_rate is not None and not float(rows_learning_rate) > 0:
            raise ConfigError(f"finetune.rows_learning_rate={rows_learning_rate!r} must be > 0 (or null: the run's)")
        self.rows_learning_rate = None if rows_learning_rate is None else float(rows_learning_rate)
        self.lora = None if lora is None else LoRAFinetune(**dict(lora))
        self.save_dtype = None if save_dtype is None else _dtype(save_dtype)
        self.control_rows: ControlRows | None = None

    def __repr__(self) -> str:
        return f"ControlFinetune(cameras={list(self.cameras)}, init_from={self.init_from}, lora={self.lora})"

    # -- before any weight loads ----------------------------------------------------------------
    def check(self, control, data_labels: set[str] | None) -> None:
        """The new labels are new to the model and in the data; ``init_from`` is a label it has."""
        have = set(control.cameras)
        known = [c for c in self.cameras if c in have]
        if known:
            raise ConfigError(f"finetune.cameras: {', '.join(known)} {'is' if len(known) == 1 else 'are'} already a label "
                              f"of the model ({control.source}); list only new labels")  # fmt: skip
        if self.init_from not in have or self.init_from == AUTO:
            raise ConfigError(f"finetune.init_from={self.init_from!r} must be one of the model's moves: "
                              f"{', '.join(c for c in control.cameras if c != AUTO)}")  # fmt: skip
        if data_labels is not None:
            missing = [c for c in self.cameras if c not in data_labels]
            if missing:
                raise ConfigError(f"finetune.cameras: no clip of the data is labelled {', '.join(missing)}; label "
                                  "some (data=folder: labels.csv; procedural data: data.cameras)")  # fmt: skip

    @staticmethod
    def check_trainer(options: Mapping[str, Any]) -> None:
        """FSDP would shard the rows' parameters, which the control table reads outside any FSDP unit."""
        strategy = options.get("strategy") or "auto"
        if (strategy if isinstance(strategy, str) else strategy.get("name")) == "fsdp":
            raise ConfigError("finetune=control does not run under trainer=fsdp (it would shard the new rows); use one "
                              "GPU or trainer=ddp, with finetune.lora and gradient_checkpointing=true for the 7B")  # fmt: skip

    # -- training -------------------------------------------------------------------------------
    def prepare(self, transformer: torch.nn.Module) -> None:
        if self.lora is not None:
            self.lora.prepare(transformer)
        else:
            transformer.requires_grad_(False)

    def prepare_control(self, control) -> ControlRows:
        """Add the new rows to ``control``'s table as trainable parameters; returns their module."""
        rows = {row_key(camera, motion, control.aspect): row_key(self.init_from, motion, control.aspect)
                for camera in self.cameras for motion in control.motions}  # fmt: skip
        self.control_rows = ControlRows(control.table, rows)
        control.use_table({**control.table, **self.control_rows.tensors()})
        log.info("control rows: %d new (%s x motions %s), from %s", len(rows), ", ".join(self.cameras),
                 ", ".join(control.motions), self.init_from)  # fmt: skip
        return self.control_rows

    def param_groups(self, module: torch.nn.Module, learning_rate: float) -> list[dict]:
        rows = list(self.control_rows.parameters())
        ids = {id(p) for p in rows}
        others = [p for p in module.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rows, "lr": self.rows_learning_rate or learning_rate}]
        return groups + ([{"params": others, "lr": learning_rate}] if others else [])

    def checkpoint_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Of the transformer, only the adapter (if any): the rest is the source's."""
        return self.lora.checkpoint_state(state) if self.lora is not None else {}

    # -- export ---------------------------------------------------------------------------------
    def new_rows(self, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The trained rows, each tensor in the dtype of the row it started from."""
        if self.control_rows is None:
            raise ConfigError("finetune=control exports after training; prepare_control was never called")
        starts = {f"{row}.{f}": f"{start}.{f}" for row, start in self.control_rows.rows.items() for f in FIELDS}
        return {key: t.detach().to("cpu", like[starts[key]].dtype).contiguous() for key, t in self.control_rows.tensors().items()}

    def export(
        self, state: Mapping[str, torch.Tensor], *, source: Path, output_dir: Path, base_model: Mapping[str, str] | None = None
    ) -> Path:
        """``embeddings.safetensors`` (+ ``lora.safetensors``) and ``checkpoint/``; returns the folder."""
        source, output_dir = Path(source), Path(output_dir)
        original = load_file(str(source / self.file_name))  # the old rows as stored: copied bit for bit
        table = {**original, **self.new_rows(original)}
        meta = {"ruyi_base_model": str(source), "ruyi_new_cameras": ",".join(self.cameras), **dict(base_model or {})}
        save_safetensors(table, output_dir / self.file_name, metadata=meta)
        transformer = None
        if self.lora is not None:
            self.lora.export(state, source=source, output_dir=output_dir, base_model=base_model)
            transformer = merged_lora_state(state, self.lora.scale)
        return export_checkpoint(transformer, source=source, folder=output_dir / "checkpoint", dtype=self.save_dtype,
                                 files={self.file_name: table})  # fmt: skip


def merged_lora_state(state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A peft-wrapped transformer's state dict -> the plain one with ``W + scale * B @ A`` (fp32)."""
    from ruyi.training.finetune import LORA_A, LORA_B

    out = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        path, found, name = key.rpartition(".base_layer.")
        if not found:
            out[key] = value
            continue
        if name == "weight" and path + LORA_A in state:
            down, up = state[path + LORA_A].float(), state[path + LORA_B].float()
            value = (value.float() + scale * (up @ down)).to(value.dtype)
        out[f"{path}.{name}"] = value
    return out


def data_labels(dataset) -> set[str] | None:
    """The camera labels a dataset's clips carry (None where it cannot say up front)."""
    labels = getattr(dataset, "camera_labels", None)
    return None if labels is None else set(labels)


def check_data_labels(control, dataset, finetune) -> None:
    """Every label of the data is one the model has or ``finetune=control`` teaches, before any weight loads."""
    labels = data_labels(dataset)
    check = getattr(finetune, "check", None)
    if callable(check):
        check(control, labels)
    taught = set(getattr(finetune, "cameras", ()))
    unknown = sorted((labels or set()) - set(control.cameras) - taught)
    if unknown:
        raise ConfigError(
            f"the data has clips labelled {', '.join(unknown)}, which the model has no rows for (it has "
            f"{', '.join(control.cameras)}); teach them with finetune=control finetune.cameras=[{','.join(unknown)}]"
        )
