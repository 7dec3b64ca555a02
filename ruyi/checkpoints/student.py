"""What a step-distilled student says about itself, and the request check it makes possible.

``scripts/train.py finetune=distill`` writes a record beside the weights it exports: a
``distilled.json`` in a full checkpoint folder, or a ``ruyi_distilled`` entry in a LoRA's
safetensors header. It names the sampler and the number of segments the student was trained for and
the teacher it copies (guidance included). Reading it costs a small file or a header, no weights, so
``scripts/infer.py`` refuses a student run with another sampler or another segment count before
anything loads; ``cfg > 1`` with the student's sampler is refused by the request check itself
(``TurboSampler.guidance_free``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ruyi.errors import CheckpointError, ConfigError, InputError
from ruyi.samplers.turbo import DEFAULT_SEGMENTS, TurboSampler, check_segments, check_steps

RECORD_FILE = "distilled.json"
HEADER_KEY = "ruyi_distilled"


@dataclass(frozen=True)
class StudentRecord:
    """A distilled student: run it with ``sampler`` (``segments`` of it) and ``cfg=1``."""

    sampler: str
    segments: int
    teacher: str  # where the guided teacher was read from (never copied)
    teacher_cfg: float
    teacher_substeps: int  # the teacher's guided DDIM steps per student step
    method: str = "trajectory distillation of a guided teacher (progressive distillation in one phase)"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> StudentRecord:
        try:
            data: Any = json.loads(text)
            record = cls(**data)
            check_segments(record.segments)
        except (TypeError, ValueError, ConfigError) as err:
            raise CheckpointError(f"{where}: its distillation record is damaged ({err}); re-export the student") from None
        return record

    def usage(self) -> str:
        return f"sampler={self.sampler} steps={self.segments} cfg=1"


def folder_student(folder: str | Path | None) -> StudentRecord | None:
    """The record of a checkpoint folder (None: not a distilled student, or no folder yet)."""
    if folder is None:
        return None
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    return StudentRecord.from_json(path.read_text(), str(path))


def lora_student(path: str | Path) -> StudentRecord | None:
    """The record in a LoRA file's header (None: an ordinary LoRA)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(HEADER_KEY)
    except Exception as err:  # noqa: BLE001 - the LoRA plugin's own check names a damaged file
        raise InputError(f"lora file {path} is not a readable safetensors file ({type(err).__name__})") from None
    return None if raw is None else StudentRecord.from_json(raw, f"lora file {path}")


def students(plan) -> list[tuple[str, StudentRecord]]:
    """(where, record) for the plan's model folder and each LoRA it merges that is a student."""
    found = []
    model = folder_student(plan.spec.model.path)
    if model is not None:
        found.append((f"model.path={plan.spec.model.path}", model))
    for plugin in plan.plugins:
        path = getattr(plugin, "path", None)
        if getattr(type(plugin), "registry_name", None) == "lora" and path is not None:
            record = lora_student(path)
            if record is not None:
                found.append((f"lora file {path}", record))
    return found


def check_student(plan, *, steps: int | None = None) -> None:
    """Before any weight loads: a student runs with the sampler and segments it was distilled for,
    and (given ``steps``) the turbo sampler with a step count that keeps to its segments; without
    ``steps`` (``ruyi.load_pipeline``) the sampler checks them at the call. ``cfg`` is the request
    check's: ``validate_request`` refuses ``cfg > 1`` with a guidance-free sampler. Inference only:
    training may start from a student whatever the (unused) sampler."""
    sampler = plan.spec.sampler
    turbo = issubclass(sampler.cls, TurboSampler)
    segments = check_segments(dict(sampler.options).get("segments", DEFAULT_SEGMENTS)) if turbo else None
    for where, record in students(plan):
        if sampler.name != record.sampler:
            raise ConfigError(
                f"{where} is a step-distilled student (guidance trained in): pass {record.usage()}, not sampler={sampler.name}"
            )
        if segments != record.segments:
            raise ConfigError(
                f"sampler.segments={segments} but {where} was distilled to {record.segments} steps; "
                f"pass sampler.segments={record.segments} ({record.usage()})"
            )
    if segments is not None and steps is not None:
        check_steps(steps, segments)
