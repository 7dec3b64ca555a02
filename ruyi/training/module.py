"""``RuyiTrainingModule``: a LightningModule around an assembled ``RuyiPipeline``.

Lightning owns the loop, devices, precision, strategies (DDP, FSDP) and checkpoints; peft owns
LoRA (see ``finetune.py``); this module owns one training step: encode the clip with the frozen
VAE/CLIP as inference does, noise it, and regress the scheduler's target.

Only the transformer is a registered submodule. The frozen VAE and image encoder stay outside
what the strategy wraps: FSDP would shard them and gather their weights only inside ``forward``,
which ``vae.encode`` never calls; DDP would broadcast them for nothing; checkpoints would carry
them. The module therefore places them on its device itself when fitting starts.
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch

from ruyi.training.inputs import BatchEncoder
from ruyi.training.objective import DiffusionObjective

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "cosine")


def seconds(max_time: str | dict | None) -> float | None:
    """Lightning's ``max_time`` ("DD:HH:MM:SS" or {days:, hours:, minutes:, seconds:}) in seconds."""
    if not max_time:
        return None
    if isinstance(max_time, str):
        days, hours, minutes, secs = (int(x) for x in max_time.split(":"))
        return float(((days * 24 + hours) * 60 + minutes) * 60 + secs)
    return float(sum(max_time.get(k, 0) * f for k, f in (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))))


class RuyiTrainingModule(L.LightningModule):
    """``training_step(batch)`` -> loss; batch as ``ruyi.training.data.collate_clips`` makes it."""

    def __init__(
        self,
        *,
        pipe,
        finetune,
        objective: DiffusionObjective,
        encoder: BatchEncoder,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        schedule: str = "constant",
        steps_for_time_s: float | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            from ruyi.errors import ConfigError

            raise ConfigError(f"schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")
        self.pipe, self.finetune, self.objective, self.encoder = pipe, finetune, objective, encoder
        self.learning_rate, self.weight_decay = float(learning_rate), float(weight_decay)
        self.warmup_steps, self.schedule = int(warmup_steps), schedule
        self.steps_for_time_s = steps_for_time_s
        self._clock: dict[int, float] = {}
        self.transformer = pipe.transformer
        finetune.prepare(self.transformer)
        # what a finetune trains outside the transformer (finetune=control: new rows of the control
        # table), registered here so that the optimizer, the strategy and checkpoints see it
        self.control_rows = getattr(finetune, "prepare_control", lambda control: None)(pipe.control)
        self.transformer.train()
        if gradient_checkpointing:
            # the model's own (diffusers ModelMixin): each DiT block recomputed in backward
            self.transformer.enable_gradient_checkpointing()
        # a LoRA checkpoint holds the adapter only: the base weights come from model.path again
        self.strict_loading = getattr(finetune, "strict_loading", not hasattr(finetune, "rank"))

    # -- placement of what the strategy does not manage ------------------------------------------
    # -- a step budget from a time budget -----------------------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """With ``steps_for_time_s``, measure the speed over steps 10-100 (inside the warm-up) and
        fix ``max_steps`` to what fits the time left. The schedule then depends on steps only, so
        ``trainer.max_steps=<that number>`` re-creates the run on any hardware."""
        if not self.steps_for_time_s:
            return
        step, now = self.global_step, time.monotonic()
        if step in (1, 10, 100):
            self._clock[step] = now
        if step == 100 and self.steps_for_time_s:
            rate = 90 / (now - self._clock[10])
            left = self.steps_for_time_s - (now - self._clock[1])
            total = min(self.trainer.max_steps, step + int(0.92 * rate * max(0.0, left)))
            self.trainer.fit_loop.epoch_loop.max_steps = total
            log.info("%.1f steps/s: max_steps fixed to %d for the %.0f s budget", rate, total, self.steps_for_time_s)
            self.steps_for_time_s = None

    def on_fit_start(self) -> None:
        for frozen in (self.pipe.vae, self.pipe.image_encoder):
            frozen.to(self.device).eval().requires_grad_(False)
        self.pipe.execution_device = self.device

    # -- the step ----------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        own_loss = getattr(self.finetune, "training_loss", None)
        if own_loss is not None:  # a method with its own objective (finetune=distill: a guided teacher's steps)
            loss = own_loss(self, batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["camera"]))
            return loss
        encoded = self.encoder.encode(batch)
        x0 = encoded.x0.float()
        t = self.objective.sample_timesteps(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        noisy, target = self.objective.noisy_and_target(x0, noise, t)
        kwargs = self.encoder.transformer_kwargs(encoded, batch, t, self.objective.num_train_timesteps)
        prediction = self.transformer(noisy.to(self.pipe.dtype), t.to(self.pipe.dtype), **kwargs)
        loss = self.objective.loss(prediction, target)
        if self.control_rows is not None:
            # every new row joins the graph, also in a batch without its label: each rank then steps
            # alike (DDP) and a batch of old labels alone still has a gradient
            loss = loss + 0.0 * sum(p.sum() for p in self.control_rows.parameters())
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def configure_optimizers(self):
        groups = getattr(self.finetune, "param_groups", None)  # e.g. finetune=control's rows at their own rate
        params = groups(self, self.learning_rate) if groups else [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)

        def factor(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            total = self.trainer.max_steps if self.trainer is not None else -1
            if self.schedule != "cosine" or not total or total <= 0:
                return 1.0
            progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        prefix = "transformer."
        state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        others = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefix)}  # control rows
        checkpoint["state_dict"] = {**{prefix + k: v for k, v in self.finetune.checkpoint_state(state).items()}, **others}

    def transformer_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The transformer's keys of a LightningModule state dict, without the module prefix."""
        prefix = "transformer."
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
