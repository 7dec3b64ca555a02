"""The body of ``scripts/train.py``: validate, assemble the pipeline as inference does, fit, export.

Every user error ends as one line on stderr and exit code 2, before any weights load where
possible. Rank 0 alone writes the exported weights and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from ruyi.errors import OutputError, RuyiUserError, exit_code_of

log = logging.getLogger("ruyi")

OOM_HINT = (
    "out of GPU memory; try gradient_checkpointing=true, cache_latents=true, a smaller batch_size or "
    "data.frames / data.base_resolution, finetune=lora, or trainer=fsdp on several GPUs"
)
# what a run writes into output_dir: none may exist beforehand (Lightning's CSV logger would
# otherwise delete earlier logs, and an export never replaces a file)
OWNED = ("logs", "checkpoints", "lora.safetensors", "checkpoint", "summary.json", "latent_cache")


def check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"output_dir={output_dir} is a file; give a folder")
    taken = [name for name in OWNED if (output_dir / name).exists()]
    if taken:
        raise OutputError(
            f"output_dir={output_dir} already holds {', '.join(taken)} from an earlier run; pick a new output_dir "
            "(resume=<that run>/checkpoints/<file>.ckpt continues it)"
        )


def build_component(node: DictConfig) -> Any:
    """``instantiate(node)``, with a user error in the constructor reported as itself (Hydra wraps it)."""
    from hydra.errors import InstantiationException

    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, RuyiUserError):
            raise err.__cause__ from None
        raise


def run(cfg: DictConfig) -> int:
    """Train as the config says; returns the process exit code."""
    return exit_code_of(lambda: _run(cfg), oom_hint=OOM_HINT)


@dataclass
class TrainingRun:
    """Everything a run needs, built and validated; ``fit()`` then ``export()``."""

    module: Any
    data: Any
    trainer: Any
    finetune: Any
    source: Path
    output_dir: Path
    resume: str | None
    seconds: float = 0.0

    def fit(self) -> None:
        began = time.perf_counter()
        self.trainer.fit(self.module, datamodule=self.data, ckpt_path=self.resume)
        self.seconds = time.perf_counter() - began

    def export(self) -> Path | None:
        """Rank 0 writes the export and returns its path; other ranks None (a collective call under
        FSDP: every rank gathers the full state dict)."""
        state = self.module.transformer_state(self.trainer.strategy.lightning_module_state_dict())
        if not self.trainer.is_global_zero:
            return None
        return self.finetune.export(state, source=self.source, output_dir=self.output_dir)


def build_run(cfg: DictConfig, *, weights: str = "checkpoint") -> TrainingRun:
    """Validate the config (before any weights load), then load and assemble everything.

    The pipeline comes from the one assembly path (``PipelineSpec.from_config`` -> ``validate`` ->
    ``build``), built on ``cfg.device`` (cpu: Lightning places the trained model, the module its
    frozen encoders). ``weights="random"``: the preset's real shape with random numbers
    (benchmarks; the scheduler then comes from ``model.scheduler_config``).
    """
    import lightning as L

    from ruyi.assembly import PipelineSpec, build
    from ruyi.registry import load_builtins
    from ruyi.training.datamodule import ClipDataModule
    from ruyi.training.inputs import BatchEncoder, ConditionedClips, LatentCache
    from ruyi.training.module import RuyiTrainingModule, seconds
    from ruyi.training.objective import DiffusionObjective, check_timestep_shift
    from ruyi.training.trainer import build_trainer, check_trainer
    from ruyi.weights import scheduler_config

    load_builtins()
    # 1. everything that needs no weights
    output_dir = Path(to_absolute_path(cfg.output_dir))
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        check_output_dir(output_dir)
    plan = PipelineSpec.from_config(cfg).validate()
    finetune = build_component(cfg.finetune)
    dataset = build_component(cfg.data)
    trainer_options: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    check_trainer(trainer_options)
    check_timestep_shift(cfg.timestep_shift)
    L.seed_everything(int(cfg.seed), workers=True)
    # 2. weights, assembled as for inference
    pipe = build(plan, weights=weights)
    path = pipe.model_path
    schedule_config = scheduler_config(path) if path is not None else OmegaConf.to_container(cfg.model.scheduler_config, resolve=True)
    cache = LatentCache(output_dir / "latent_cache") if cfg.cache_latents else None
    module = RuyiTrainingModule(
        pipe=pipe, finetune=finetune, objective=DiffusionObjective(schedule_config, timestep_shift=cfg.timestep_shift),
        encoder=BatchEncoder(pipe, uncond_prob=cfg.uncond_prob, cache=cache), learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule,
        steps_for_time_s=seconds(cfg.steps_for_time), gradient_checkpointing=bool(cfg.gradient_checkpointing),
    )  # fmt: skip
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log.info("%s: %d trainable parameters; data %s (%d clips)", finetune, trainable, type(dataset).__name__, len(dataset))
    clips = ConditionedClips(
        dataset, pipe.image_conditioning, end_frame_prob=cfg.end_frame_prob,
        pixel_values=getattr(pipe.image_encoder, "pixel_values", None),
    )  # fmt: skip
    data = ClipDataModule(dataset=clips, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers))
    return TrainingRun(
        module=module, data=data, trainer=build_trainer(trainer_options, output_dir=output_dir), finetune=finetune,
        source=path, output_dir=output_dir, resume=to_absolute_path(cfg.resume) if cfg.resume else None,
    )  # fmt: skip


def _run(cfg: DictConfig) -> int:
    import lightning as L

    job = build_run(cfg)
    job.fit()
    exported = job.export()
    if exported is None:
        return 0
    trainer = job.trainer
    summary = {
        "exported": str(exported), "steps": trainer.global_step, "max_steps": trainer.max_steps,
        "seconds": round(job.seconds, 1),
        "loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        "trainable_parameters": sum(p.numel() for p in job.module.parameters() if p.requires_grad),
        "device": torch.cuda.get_device_name() if trainer.strategy.root_device.type == "cuda" else platform.machine(),
        "world_size": trainer.world_size, "torch": torch.__version__, "lightning": L.__version__,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }  # fmt: skip
    (job.output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("trained %d steps in %.1f s; wrote %s", trainer.global_step, job.seconds, exported)
    print(exported)
    return 0
