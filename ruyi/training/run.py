"""The body of ``scripts/train.py``: validate, assemble the pipeline as inference does, fit, export.

Every user error ends as one line on stderr and exit code 2, before any weights load where
possible (``ruyi.training.checks``; Lightning's own Trainer is built before the weights too), and
a refused run writes nothing. Rank 0 alone writes the exported weights and ``summary.json``, into
an ``output_dir`` it holds alone (``ruyi.training.outputs``).
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
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from ruyi.errors import ConfigError, exit_code_of
from ruyi.files import write_text_atomic
from ruyi.training.outputs import OutputDirClaim, RunWatch, check_output_dir, register_resolvers

log = logging.getLogger("ruyi")
register_resolvers()  # configs/train.yaml's ${ruyi_run:}, for callers that compose it without scripts/train.py

OOM_HINT = (
    "out of GPU memory; try gradient_checkpointing=true, cache_latents=true, a smaller batch_size or "
    "data.frames / data.base_resolution, finetune=lora, or trainer=fsdp on several GPUs"
)
def build_component(kind: str, node: DictConfig, where: str) -> Any:
    """The registered ``kind`` class that ``node``'s ``_target_`` names, built with the node's other
    keys: the same path as the pipeline's components (``Component.from_node``)."""
    from ruyi.components import Component

    return Component.from_node(kind, node, where).create()


def run(cfg: DictConfig) -> int:
    """Train as the config says; returns the process exit code (130/143 after Ctrl-C/SIGTERM, with
    one line on what the run left in ``output_dir``)."""
    watch = RunWatch()
    return exit_code_of(lambda: _run(cfg, watch), oom_hint=OOM_HINT, on_interrupt=watch.describe)


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
    claim: OutputDirClaim | None = None  # rank 0's hold on output_dir; release() when the run ends
    base_model: dict[str, str] | None = None  # what the export records about the model it was trained on
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
        return self.finetune.export(state, source=self.source, output_dir=self.output_dir, base_model=self.base_model)

    def release(self) -> None:
        """End the hold on ``output_dir``; without a checkpoint or export, what this run made there goes."""
        if self.claim is not None:
            self.claim.release()


def build_run(cfg: DictConfig, *, weights: str = "checkpoint", watch: RunWatch | None = None) -> TrainingRun:
    """Validate the config (before any weights load), then load and assemble everything.

    The pipeline comes from the one assembly path (``PipelineSpec.from_config`` -> ``validate`` ->
    ``build``), built on ``cfg.device`` (cpu: Lightning places the trained model, the module its
    frozen encoders). ``weights="random"``: the preset's real shape with random numbers
    (benchmarks; the scheduler then comes from ``model.scheduler_config``). Rank 0 claims
    ``output_dir`` once everything is checked; the returned run's ``release()`` gives it back.
    """
    import lightning as L

    from ruyi.assembly import PipelineSpec
    from ruyi.registry import load_builtins
    from ruyi.training.checks import check_training
    from ruyi.training.control import check_data_labels
    from ruyi.training.objective import check_timestep_shift
    from ruyi.training.trainer import build_trainer, check_trainer

    load_builtins()
    # 1. everything that needs no weights, Lightning's Trainer included; nothing is written yet
    output_dir = Path(to_absolute_path(cfg.output_dir))
    main_rank = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    if main_rank:
        check_output_dir(output_dir)
    plan = PipelineSpec.from_config(cfg).validate()
    check_training(cfg)
    finetune = build_component("finetune", cfg.finetune, "finetune")
    dataset = build_component("data", cfg.data, "data")
    check_data_labels(plan.control, dataset, finetune)  # the checkpoint's labels, read from its table's header
    if len(dataset) < int(cfg.batch_size):
        raise ConfigError(f"the dataset holds {len(dataset)} clips, fewer than batch_size={cfg.batch_size}")
    trainer_options: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    check_trainer(trainer_options)
    getattr(finetune, "check_trainer", lambda options: None)(trainer_options)  # finetune=control: not under FSDP
    check_timestep_shift(cfg.timestep_shift)
    trainer = build_trainer(trainer_options, output_dir=output_dir)
    # 2. hold output_dir, then weights, assembled as for inference
    claim = OutputDirClaim(output_dir) if main_rank else None
    if watch is not None:
        watch.claim = claim
    try:
        L.seed_everything(int(cfg.seed), workers=True)
        return _assemble(cfg, plan, weights=weights, finetune=finetune, dataset=dataset, trainer=trainer,
                         output_dir=output_dir, claim=claim)  # fmt: skip
    except BaseException:
        if claim is not None:
            claim.release()  # a run that never trained leaves nothing behind
        raise


def _assemble(cfg: DictConfig, plan, *, weights: str, finetune, dataset, trainer, output_dir: Path, claim) -> TrainingRun:
    from ruyi.assembly import build
    from ruyi.plugins.lora import base_model_metadata
    from ruyi.training.datamodule import ClipDataModule
    from ruyi.training.inputs import BatchEncoder, ConditionedClips, LatentCache
    from ruyi.training.module import RuyiTrainingModule, seconds
    from ruyi.training.objective import DiffusionObjective
    from ruyi.checkpoints import scheduler_config

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
        pixel_values=getattr(pipe.image_encoder, "pixel_values", None), known_frames=known_frames(cfg),
    )  # fmt: skip
    data = ClipDataModule(dataset=clips, batch_size=int(cfg.batch_size), num_workers=data_workers(cfg.num_workers))
    transformer_config = (path / "transformer") if path is not None else cfg.model.get("transformer_arch")
    return TrainingRun(
        module=module, data=data, trainer=trainer, finetune=finetune, source=path, output_dir=output_dir,
        resume=to_absolute_path(cfg.resume) if cfg.resume else None, claim=claim,
        base_model=base_model_metadata(plan.spec.model.name, transformer_config, preset=model_choice()),
    )  # fmt: skip


def known_frames(cfg: DictConfig) -> dict | None:
    """``known_frames`` as a plain mapping (None: the start frame, and the end with ``end_frame_prob``)."""
    shares = cfg.get("known_frames")
    return None if shares is None else OmegaConf.to_container(shares, resolve=True)


def model_choice() -> str | None:
    """The ``model=`` preset this run was composed with (None outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("model")


def _run(cfg: DictConfig, watch: RunWatch | None = None) -> int:
    job = build_run(cfg, watch=watch)
    try:
        return _fit_and_export(cfg, job)
    finally:
        job.release()


def _fit_and_export(cfg: DictConfig, job: TrainingRun) -> int:
    import lightning as L

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
    write_text_atomic(job.output_dir / "summary.json", json.dumps(summary, indent=2, default=str), what="the summary",
                      replace=False)  # fmt: skip
    log.info("trained %d steps in %.1f s; wrote %s", trainer.global_step, job.seconds, exported)
    print(exported)
    return 0


def data_workers(setting) -> int:
    """``num_workers``: a number, or ``auto``: one DataLoader process per core this process may
    use, less one for the training loop itself, at most 16."""
    if setting != "auto":
        return int(setting)
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(16, cores - 1))

