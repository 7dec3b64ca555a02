"""``finetune=distill``: a few-step student without guidance from the guided model (its teacher).

The method is progressive distillation (Salimans & Ho 2022) of a guided teacher (Meng et al. 2023),
done in one phase (TRACT, Berthelot et al. 2023) and over whole segments (multistep consistency
models, Heek et al. 2024); ``benchmarks/RESULTS.md`` says why this one. Per training step:

1. the teacher, with classifier-free guidance at ``teacher_cfg``, samples from pure noise down the
   trailing grid of ``segments`` segments, ``teacher_substeps`` deterministic DDIM steps per segment
   (4 x 4 = 16 guided steps by default), for every clip of the batch: its own trajectory, the states
   the student will meet at inference;
2. for ``segments_per_clip`` segments of each clip, a start point on that segment's grid (its first
   point with probability ``boundary_prob``, else one inside, so 8 student steps work too) and the
   teacher's state at the segment's end;
3. the student (``student: full`` weights, or ``lora``) predicts at the start point with the
   positive conditioning only, one forward; its target is the velocity whose DDIM step lands exactly
   on the teacher's end state, and the loss is the MSE on it (the checkpoint's own v-prediction loss,
   progressive distillation's "SNR + 1" weighting).

The sampler that runs the result is ``sampler=turbo`` (``ruyi.samplers.turbo``: the same trailing
boundaries). The teacher is frozen and never written: with ``student: lora`` and the teacher at
the model's own path (or ``teacher: same``) it is the same transformer with the adapter switched
off (no second copy of a 7B); otherwise a frozen copy in memory, read from ``teacher`` (or, with
``same``, taken from the starting weights before training). The export is the inner method's
(``checkpoint/`` or ``lora.safetensors``) with a record of the distillation
(``ruyi.checkpoints.student``), which lets ``infer.py`` refuse a wrong sampler, segment count or
``cfg > 1`` before any weight loads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ruyi.checkpoints import CHECKPOINT_PARTS, is_checkpoint
from ruyi.checkpoints.student import HEADER_KEY, RECORD_FILE, StudentRecord
from ruyi.checks import check_int, check_number
from ruyi.errors import CheckpointError, ConfigError, MissingWeightsError
from ruyi.conditioning.request import MAX_CFG
from ruyi.registry import FINETUNES
from ruyi.samplers.turbo import CLEAN, DEFAULT_SEGMENTS, check_segments, segment_ends
from ruyi.training.export import export_checkpoint
from ruyi.training.finetune import LORA_TARGETS, FullFinetune, LoRAFinetune
from ruyi.training.inputs import BatchEncoder, EncodedClip
from ruyi.training.objective import DiffusionObjective

log = logging.getLogger(__name__)

STUDENTS = ("full", "lora")
SAME = "same"  # finetune.teacher=same: the model's own weights as loaded (random-weight benchmarks)
# the scheduler keys that fix the noise levels: teacher and student must agree on them
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                 "rescale_betas_zero_snr")  # fmt: skip


def rollout_grid(segments: int, substeps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The teacher's timesteps: each trailing segment cut into ``substeps`` (whole timesteps), then
    :data:`~ruyi.samplers.turbo.CLEAN`. 4 segments x 2 substeps is the 8-step trailing grid."""
    ends = segment_ends(segments, num_train_timesteps)
    grid = [round(b - j * (b - e) / substeps) for b, e in zip(ends, ends[1:]) for j in range(substeps)]
    return [*grid, CLEAN]


class NoiseLevels:
    """sqrt(alpha_bar) and sqrt(1 - alpha_bar) at whole timesteps, with t = -1 the clean sample."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        table = torch.cat([alphas_cumprod.double(), torch.ones(1, dtype=torch.float64)])  # index -1: alpha_bar 1
        self.alpha, self.sigma = table.sqrt(), (1 - table).clamp(min=0).sqrt()

    def at(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) at ``t`` (an int, or (B,)), shaped to broadcast over ``like`` (B, ...)."""
        index = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
        shape = (-1,) + (1,) * (like.ndim - 1)
        return tuple(v[index].to(like.device, torch.float32).reshape(shape) for v in (self.alpha, self.sigma))  # type: ignore[return-value]

    def ddim_step(self, x: torch.Tensor, v: torch.Tensor, t, s) -> torch.Tensor:
        """Deterministic DDIM from ``t`` to ``s`` with the v-prediction ``v``: x0 = a x - sigma v,
        eps = sigma x + a v, x_s = a_s x0 + sigma_s eps."""
        a_t, s_t = self.at(t, x)
        a_s, s_s = self.at(s, x)
        return a_s * (a_t * x - s_t * v) + s_s * (s_t * x + a_t * v)

    def velocity_to(self, x: torch.Tensor, target: torch.Tensor, t, s) -> torch.Tensor:
        """The v whose DDIM step from ``x`` at ``t`` lands on ``target`` at ``s`` (< t): the
        step is x_s = c x + d v with c = a_s a_t + sigma_s sigma_t, d = sigma_s a_t - a_s sigma_t."""
        a_t, s_t = self.at(t, x)
        a_s, s_s = self.at(s, x)
        return (target - (a_s * a_t + s_s * s_t) * x) / (s_s * a_t - a_s * s_t)


def run_like(teacher: torch.nn.Module, pipe, device: torch.device) -> None:
    """A separate teacher gets the kernels the student runs with: the pipeline's attention backend
    and its regionally compiled blocks (``attention=``, ``compile=``), decided for ``device``."""
    for extension in pipe.extensions:
        if getattr(extension, "stage", None) == "attention" and hasattr(extension, "attach"):
            extension.attach(teacher, device=device)
    for extension in pipe.extensions:
        if getattr(extension, "compiles", False) and hasattr(extension, "compile_blocks"):
            extension.compile_blocks(teacher, device=device)


@FINETUNES.register("distill")
class DistillFinetune:
    """A ``segments``-step, guidance-free student of the guided ``teacher`` (see the module docstring).

    ``student``: ``full`` (every weight; the tiny models) or ``lora`` (``rank``/``alpha`` on
    ``target_modules``; the 7B). ``save_dtype``: the export's (None: the full checkpoint's own,
    float32 for a LoRA).
    """

    def __init__(
        self,
        *,
        teacher: str | None = None,
        student: str = "full",
        segments: int = DEFAULT_SEGMENTS,
        teacher_cfg: float = 4.0,
        teacher_substeps: int = 4,
        boundary_prob: float = 0.5,
        segments_per_clip: int | None = None,
        rank: int = 16,
        alpha: float = 16.0,
        target_modules: Sequence[str] = LORA_TARGETS,
        save_dtype: str | None = None,
    ) -> None:
        # 1. the teacher: a checkpoint folder, checked before any weight loads, or the model's own weights
        if teacher is None or not str(teacher).strip():
            raise ConfigError(
                "finetune=distill needs a teacher checkpoint: finetune.teacher=<folder of the guided model> "
                "(configs/finetune/distill.yaml takes the model's own, model.path; 'same': its weights as loaded)"
            )
        self.teacher_name = str(teacher)  # as given (pkg://...), for the record
        self.teacher: Path | None = None  # None: the model's own starting weights ("same")
        if self.teacher_name != SAME:
            from ruyi.hydra_config import model_source

            self.teacher = model_source({"path": self.teacher_name}).path
            if not is_checkpoint(self.teacher):
                missing = [p for p in CHECKPOINT_PARTS if not (self.teacher / p).exists()]
                raise MissingWeightsError(
                    f"finetune.teacher={self.teacher} holds no Ruyi checkpoint (missing: {', '.join(missing)}); "
                    "point it at the guided model to distil (by default the model's own folder, model.path)"
                )
        # 2. the method's numbers
        if student not in STUDENTS:
            raise ConfigError(f"finetune.student={student!r} is not one of {', '.join(STUDENTS)}")
        self.student = student
        self.segments = check_segments(segments)
        self.teacher_cfg = check_number("finetune.teacher_cfg", teacher_cfg, low=0, high=MAX_CFG,
                                        hint="the guidance the student learns; 1 = none")  # fmt: skip
        self.teacher_substeps = check_int("finetune.teacher_substeps", teacher_substeps, low=1, high=100,
                                          hint="guided DDIM steps of the teacher per student step")  # fmt: skip
        self.boundary_prob = check_number("finetune.boundary_prob", boundary_prob, low=0, high=1,
                                          hint="share of start points on a segment's first timestep")  # fmt: skip
        per_clip = self.segments if segments_per_clip is None else segments_per_clip
        self.segments_per_clip = check_int("finetune.segments_per_clip", per_clip, low=1, high=self.segments,
                                           hint="student samples per clip, each from another segment")  # fmt: skip
        # 3. what trains and how it is written: the plain methods'
        if student == "lora":
            self.inner = LoRAFinetune(rank=rank, alpha=alpha, target_modules=target_modules, save_dtype=save_dtype or "float32")
            self.rank = self.inner.rank  # the module then loads its Lightning checkpoints non-strictly (adapter only)
        else:
            self.inner = FullFinetune(save_dtype=save_dtype)
        self._teacher: torch.nn.Module | None = None  # a frozen copy (None: the student with its adapter off)
        self._ready = False
        self._positive: BatchEncoder | None = None
        self._negative: BatchEncoder | None = None
        self._levels: NoiseLevels | None = None
        self._grid: list[int] = []

    def __repr__(self) -> str:
        return (f"DistillFinetune(student={self.student}, segments={self.segments}, teacher={self.teacher}, "
                f"teacher_cfg={self.teacher_cfg:g}, teacher_substeps={self.teacher_substeps})")  # fmt: skip

    @property
    def record(self) -> StudentRecord:
        return StudentRecord(sampler="turbo", segments=self.segments, teacher=self.teacher_name,
                             teacher_cfg=self.teacher_cfg, teacher_substeps=self.teacher_substeps)  # fmt: skip

    # -- the finetune interface (ruyi.training.finetune) ------------------------------------------
    def prepare(self, transformer: torch.nn.Module) -> None:
        """The inner method's trainable parameters; a full student's frozen teacher is taken first
        (before a resumed checkpoint can change the weights it would be copied from)."""
        if self.student == "full":
            self._teacher = self._copy(transformer) if self.teacher is None else self._load_teacher(transformer)
        self.inner.prepare(transformer)

    def checkpoint_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.inner.checkpoint_state(state)

    def export(self, state: Mapping[str, torch.Tensor], *, source: Path, output_dir: Path,
               base_model: Mapping[str, str] | None = None) -> Path:  # fmt: skip
        """The inner method's export plus the record: ``distilled.json`` in the checkpoint folder,
        or ``ruyi_distilled`` in the LoRA's header."""
        if self.student == "lora":
            return self.inner.export(state, source=source, output_dir=output_dir,
                                     base_model={**dict(base_model or {}), HEADER_KEY: self.record.to_json()})  # fmt: skip
        folder = Path(output_dir) / FullFinetune.file_name
        return export_checkpoint(state, source=source, folder=folder, dtype=self.inner.save_dtype,
                                 extra_files={RECORD_FILE: self.record.to_json() + "\n"})  # fmt: skip

    # -- the training step (RuyiTrainingModule calls it in place of its regression) ----------------
    def training_loss(self, module, batch: dict) -> torch.Tensor:
        self._setup(module)
        encoded = module.encoder.encode(batch)
        trajectory = torch.stack(self.rollout(module, encoded, batch))  # (grid points, B, C, F, h, w)
        rows, start, end = self.pick(encoded.x0.shape[0])
        grid = torch.tensor(self._grid)
        t, s = grid[start], grid[end]
        on = trajectory.device
        x_t, x_end = trajectory[start.to(on), rows.to(on)], trajectory[end.to(on), rows.to(on)]
        target = self._levels.velocity_to(x_t, x_end, t, s)  # type: ignore[union-attr]
        pipe = module.pipe
        kwargs = self._positive.transformer_kwargs(*self._rows(encoded, batch, rows), t.to(x_t.device),  # type: ignore[union-attr]
                                                   module.objective.num_train_timesteps)  # fmt: skip
        prediction = module.transformer(x_t.to(pipe.dtype), t.to(x_t.device, pipe.dtype), **kwargs)
        per_pair = DiffusionObjective.loss(prediction, target, per_sample=True)
        segment = start // self.teacher_substeps
        for i in range(self.segments):
            chosen = segment == i
            if bool(chosen.any()):
                module.log(f"distill/segment{i}", per_pair[chosen.to(per_pair.device)].mean(), batch_size=int(chosen.sum()))
        return per_pair.mean()

    @torch.no_grad()
    def rollout(self, module, encoded: EncodedClip, batch: dict, noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The guided teacher from pure noise (``noise``, else drawn) along the grid: one state per
        grid point, float32 (B, C, F, h, w)."""
        pipe = module.pipe
        steps = module.objective.num_train_timesteps
        guided = self.teacher_cfg > 1.0
        # the pipeline's start: noise * init_noise_sigma (1)
        x = torch.randn_like(encoded.x0.float()) if noise is None else noise.to(encoded.x0.device, torch.float32)
        states = [x]
        with self._teacher_model(module) as teacher:
            for t, s in zip(self._grid, self._grid[1:]):
                timesteps = torch.full((x.shape[0],), t, device=x.device)
                positive = self._positive.transformer_kwargs(encoded, batch, timesteps, steps)  # type: ignore[union-attr]
                if guided:
                    negative = self._negative.transformer_kwargs(encoded, batch, timesteps, steps)  # type: ignore[union-attr]
                    kwargs = {k: v if k == "image_rotary_emb" else torch.cat([negative[k], v]) for k, v in positive.items()}
                    inputs = torch.cat([x, x])
                else:
                    kwargs, inputs = positive, x
                timestep = torch.full((inputs.shape[0],), float(t), device=x.device, dtype=pipe.dtype)
                v = teacher(inputs.to(pipe.dtype), timestep, **kwargs)[:, : x.shape[1]].float()
                if guided:
                    uncond, cond = v.chunk(2)
                    v = uncond + self.teacher_cfg * (cond - uncond)
                x = self._levels.ddim_step(x, v, t, s)  # type: ignore[union-attr]
                states.append(x)
        return states

    def pick(self, clips: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, start, end) grid indices: ``segments_per_clip`` distinct segments per clip, a start
        on each (its first point with ``boundary_prob``, else one inside) and the segment's end."""
        k = self.teacher_substeps
        segments = torch.stack([torch.randperm(self.segments)[: self.segments_per_clip] for _ in range(clips)]).flatten()
        rows = torch.arange(clips).repeat_interleave(self.segments_per_clip)
        inside = torch.randint(1, k, segments.shape) if k > 1 else torch.zeros_like(segments)
        offset = torch.where(torch.rand(segments.shape) < self.boundary_prob, torch.zeros_like(inside), inside)
        return rows, segments * k + offset, (segments + 1) * k

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _rows(encoded: EncodedClip, batch: dict, rows: torch.Tensor) -> tuple[EncodedClip, dict]:
        """The encoded clips and labels of ``rows`` (a clip may appear once per chosen segment)."""
        index = rows.tolist()
        picked = EncodedClip(**{f: getattr(encoded, f)[rows.to(getattr(encoded, f).device)] for f in ("x0", "inpaint", "clip")})
        return picked, {key: [batch[key][i] for i in index] for key in ("camera", "motion")}

    def _setup(self, module) -> None:
        """Once, on the training device: the noise levels, the grid, the conditioning builders and
        the teacher (the student with its adapter off, or a frozen copy read from ``teacher``)."""
        if self._ready:
            return
        objective = module.objective
        if objective.prediction_type != "v_prediction":
            raise ConfigError(f"finetune=distill needs a v_prediction model; this one predicts {objective.prediction_type}")
        self._check_teacher_schedule(objective)
        self._levels = NoiseLevels(objective.scheduler.alphas_cumprod)
        self._grid = rollout_grid(self.segments, self.teacher_substeps, objective.num_train_timesteps)
        # the student is guidance-free: always the positive branch; the teacher's guidance pairs it with the negative
        self._positive = BatchEncoder(module.pipe, uncond_prob=0.0)
        self._negative = BatchEncoder(module.pipe, uncond_prob=1.0)
        if self.student == "lora":  # the base weights with the adapter off, unless the teacher is another folder
            source = module.pipe.model_path
            own = self.teacher is None or (source is not None and Path(source).resolve() == self.teacher.resolve())
            if not own:
                self._teacher = self._load_teacher(module.transformer)
        if self._teacher is not None:
            self._teacher.to(module.device)
            run_like(self._teacher, module.pipe, module.device)
        shared = self._teacher is None
        log.info("distillation: teacher %s (%s), grid %s", self.teacher_name,
                 "the student with its adapter off" if shared else "a frozen copy in memory", self._grid)  # fmt: skip
        self._ready = True

    @staticmethod
    def _copy(student: torch.nn.Module) -> torch.nn.Module:
        """A frozen copy of the student's weights in a fresh module (no hooks or compiled regions
        of the student's are shared with it)."""
        teacher = type(student).from_config(student.config)
        teacher.load_state_dict(student.state_dict())
        return teacher.to(next(student.parameters()).dtype).eval().requires_grad_(False)

    def _load_teacher(self, student: torch.nn.Module) -> torch.nn.Module:
        """The teacher's transformer from its folder, in the student's dtype; the same architecture."""
        from ruyi.models.loading import load_model

        teacher = load_model(type(student), self.teacher, dtype=next(student.parameters()).dtype)
        mine = {k: v for k, v in student.config.items() if not k.startswith("_")}
        theirs = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
        if mine != theirs:
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise CheckpointError(f"finetune.teacher={self.teacher} is another architecture than the student "
                                  f"({', '.join(changed[:4])} differ); distil a model of the same shape")  # fmt: skip
        return teacher

    def _check_teacher_schedule(self, objective: DiffusionObjective) -> None:
        from ruyi.checkpoints import scheduler_config

        if self.teacher is None:
            return
        theirs = scheduler_config(self.teacher)
        mine = objective.scheduler.config
        differ = [k for k in SCHEDULE_KEYS if k in theirs and theirs[k] != mine.get(k)]
        if differ:
            raise CheckpointError(f"finetune.teacher={self.teacher} has another noise schedule than the student "
                                  f"({', '.join(differ)} differ); teacher and student must share it")  # fmt: skip

    @contextmanager
    def _teacher_model(self, module) -> Iterator[torch.nn.Module]:
        if self._teacher is not None:
            yield self._teacher
            return
        module.transformer.disable_adapters()  # diffusers' PeftAdapterMixin: the base weights alone
        try:
            yield module.transformer
        finally:
            module.transformer.enable_adapters()
