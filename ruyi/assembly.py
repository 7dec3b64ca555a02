"""The one place a pipeline is put together.

Every caller — the CLI (Hydra), the Python API, ComfyUI, benchmarks, training — goes through the
same three steps::

    spec = PipelineSpec.from_config(cfg)        # or PipelineSpec.from_names(path, sampler="ddim", ...)
    plan = spec.validate()                      # every check that needs no weights, before any load
    pipe = build(plan, weights="checkpoint")    # or weights="random": the preset's shape, random numbers

``validate`` builds the light objects (extensions, conditioning) and asks each extension to
``check(plan)`` the whole combination; an extension declares what it needs through class attributes
and that method, so nothing here knows component names. ``build`` then loads (or creates) the
weights and attaches every extension in one loop (:func:`ruyi.extension.attach`, in
:data:`ruyi.extension.STAGES` order).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ruyi.checks import plain
from ruyi.components import Component, ModelSource
from ruyi.errors import AcceleratorRequired, ConfigError, RuyiUserError
from ruyi.extension import STAGES, attach, in_stage_order
from ruyi.memory.tiles import VAETiles
from ruyi.memory.skips import LongSkipParking
from ruyi.checkpoints import load_models, random_models, resolve_checkpoint, scheduler_config

log = logging.getLogger(__name__)

MODEL_KINDS = ("transformer", "vae", "image_encoder")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


@dataclass(frozen=True)
class PipelineSpec:
    """Everything a pipeline is made of, by name. Immutable; ``validate()`` checks it whole."""

    model: ModelSource
    transformer: Component = Component("transformer", "ruyi_transformer3d")
    vae: Component = Component("vae", "magvit")
    image_encoder: Component = Component("image_encoder", "clip_vision")
    sampler: Component = Component("sampler", "ddim")
    image_conditioning: Component = Component("conditioning", "start_end_frames")
    control: Component = Component("conditioning", "camera_motion")
    precision: Component = Component("precision", "bf16")
    offload: Component = Component("offload", "none")
    strategies: tuple[Component, ...] = ()  # attention, compile, parallel, memory options
    plugins: tuple[Component, ...] = ()
    skip_steps: int = 0
    vae_tile_size: int = 0
    vae_tile_overlap: int = 96
    device: str = "auto"
    dtype: str = "float32"

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any) -> PipelineSpec:
        """From a composed Hydra config (``configs/infer.yaml`` and the configs that extend it)."""
        from ruyi.hydra_config import spec_fields

        return cls(**spec_fields(cfg))

    @classmethod
    def from_names(
        cls,
        path: str | Path | None,
        *,
        sampler: str = "ddim",
        sampler_kwargs: Mapping[str, Any] | None = None,
        dtype: str | torch.dtype = "float32",
        offload: str = "none",
        offload_kwargs: Mapping[str, Any] | None = None,
        precision: str = "bf16",
        precision_kwargs: Mapping[str, Any] | None = None,
        skip_steps: int = 0,
        vae_tile_size: int = 0,
        vae_tile_overlap: int = 96,
        device: str | torch.device = "auto",
        clip_apply_ratio: float = 0.4,
        plugins: Sequence[Any] = (),
        strategies: Mapping[str, str | tuple[str, Mapping[str, Any]]] | None = None,
        arch: Mapping[str, Any] | None = None,
    ) -> PipelineSpec:
        """From registry names (Python API, ComfyUI). ``plugins`` are built plugin objects or
        ``(name, options)`` pairs; ``strategies`` maps a kind (``attention``, ``compile``...) to a
        name or ``(name, options)``."""
        extra = []
        for kind, choice in (strategies or {}).items():
            name, options = (choice, {}) if isinstance(choice, str) else choice
            extra.append(Component(kind, name, dict(options)))
        return cls(
            model=ModelSource(path=None if path is None else Path(path), arch=arch),
            sampler=Component("sampler", sampler, dict(sampler_kwargs or {})),
            image_conditioning=Component("conditioning", "start_end_frames", {"clip_apply_ratio": plain(clip_apply_ratio)}),
            offload=Component("offload", offload, dict(offload_kwargs or {})),
            precision=Component("precision", precision, dict(precision_kwargs or {})),
            strategies=tuple(extra),
            plugins=tuple(_plugin_component(p) for p in plugins),
            # numpy scalars from a Python caller become plain numbers (validate() checks them)
            skip_steps=plain(skip_steps), vae_tile_size=plain(vae_tile_size), vae_tile_overlap=plain(vae_tile_overlap),
            device=str(device), dtype=_dtype_name(dtype),
        )  # fmt: skip

    @classmethod
    def from_preset(cls, name: str, *, download: bool = False, **options: Any) -> PipelineSpec:
        """A preset of ``configs/model/`` by name: its checkpoint (created or downloaded as its
        YAML says), its components (``vae: pixel_patch``) and dtype; ``options`` as :meth:`from_names`."""
        from ruyi.hydra_config import load_preset, model_source, preset_components

        preset = load_preset(name)
        options.setdefault("dtype", preset.get("dtype", "float32"))
        spec = cls.from_names(None, **options)
        return spec.replace(model=model_source(preset, download=download), **preset_components(preset))

    def replace(self, **changes: Any) -> PipelineSpec:
        return replace(self, **changes)

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> Plan:
        """Every check that needs no weights; returns the :class:`Plan` that ``build`` follows."""
        device = resolve_device(self.device)
        dtype = parse_dtype(self.dtype)
        _check_int("skip_steps", self.skip_steps, "0 = off; the original offers 10, 7, 5, 1")
        _check_int("vae_tile_size", self.vae_tile_size, "0 = untiled; e.g. 512")
        _check_int("vae_tile_overlap", self.vae_tile_overlap, "pixels, e.g. 96")
        for component in (self.transformer, self.vae, self.image_encoder):
            component.cls  # noqa: B018 - an unknown name fails here, listing the valid ones
        plan = Plan(
            spec=self,
            device=device,
            dtype=dtype,
            sampler_cls=self.sampler.cls,
            image_conditioning=self.image_conditioning.create(),
            control=self.control.create(),
            precision=self.precision.create(),
            offload=self.offload.create(),
            strategies=tuple(in_stage_order(c.create() for c in self.strategies)),
            plugins=tuple(p.create() for p in self.plugins),
        )
        _check_sampler_options(self.sampler)
        plan.control.read_labels(self.model.path)  # the camera labels the checkpoint has: its table's header
        for strategy in plan.strategies:  # memory=auto settles offload, skip_steps and VAE tiles here
            if callable(getattr(strategy, "resolve", None)):
                plan = strategy.resolve(plan)
        for extension in plan.components():
            extension.check(plan)
        return plan


@dataclass(frozen=True)
class Plan:
    """A validated spec with its light objects built: what ``build`` attaches, in stage order."""

    spec: PipelineSpec
    device: torch.device
    dtype: torch.dtype
    sampler_cls: type
    image_conditioning: Any
    control: Any
    precision: Any
    offload: Any
    strategies: tuple[Any, ...]
    plugins: tuple[Any, ...]

    def components(self) -> list[Any]:
        """Every extension of this plan (``spec.skip_steps`` and ``spec.vae_tile_size`` included),
        in stage order: what ``build`` attaches."""
        spec = self.spec
        options = [LongSkipParking(spec.skip_steps)] if spec.skip_steps else []
        if spec.vae_tile_size:
            options.append(VAETiles(spec.vae_tile_size, spec.vae_tile_overlap))
        return in_stage_order([*self.plugins, self.precision, self.offload, *self.strategies, *options])

    def has(self, attribute: str) -> bool:
        """Whether any attached component declares ``attribute = True`` (e.g. ``hooks_block_forward``)."""
        return any(getattr(obj, attribute, False) for obj in self.components())


def build(spec: PipelineSpec | Plan, *, weights: str = "checkpoint"):
    """A ready ``RuyiPipeline``: validate (if not yet), load or create weights, attach strategies."""
    from ruyi.pipeline import RuyiPipeline

    plan = spec if isinstance(spec, Plan) else spec.validate()
    spec = plan.spec
    classes = {kind: getattr(spec, kind).cls for kind in MODEL_KINDS}
    if weights == "checkpoint":
        path = resolve_checkpoint(spec.model)
        homes = {kind: plan.offload.weights_home(kind, plan) for kind in classes}
        models = load_models(classes, path, dtype=plan.dtype, homes=homes)
        plan.control.load(path)
        sampler = spec.sampler.create(scheduler_config=scheduler_config(path))
    elif weights == "random":
        if spec.model.arch is None:
            raise ConfigError("weights=random needs a model preset with the architecture (model=ruyi_mini_7b)")
        home = plan.device if getattr(plan.offload, "keeps_weights_on_device", False) else torch.device("cpu")
        models, table = random_models(classes, spec.model.arch, dtype=plan.dtype, device=plan.device, home=home)
        plan.control.use_table(table)
        sampler = spec.sampler.create(scheduler_config=spec.model.arch["scheduler_config"])
        path = None
    else:
        raise ConfigError(f"weights={weights!r} must be 'checkpoint' or 'random'")
    pipe = RuyiPipeline(
        **models, sampler=sampler, image_conditioning=plan.image_conditioning, control=plan.control,
        dtype=plan.dtype, model_path=path, defaults=(spec.model.arch or {}).get("run"), execution_device=plan.device,
    )  # fmt: skip
    log.info("pipeline: sampler %s on %s in %s", sampler, plan.device, plan.dtype)
    attach(plan.components(), pipe)
    return pipe


def load_pipeline(path: str | Path | None = None, *, weights: str = "checkpoint", **options: Any):
    """The Python API: ``ruyi.load_pipeline("ruyi_tiny_pans")`` (a preset of ``configs/model/``:
    its checkpoint, components, dtype and call defaults, as ``scripts/infer.py model=...``) or
    ``ruyi.load_pipeline("models/Ruyi-Mini-7B", offload="group", dtype="bf16", ...)`` (a folder).

    Options as :meth:`PipelineSpec.from_names` (sampler, dtype, offload[_kwargs],
    precision[_kwargs], skip_steps, vae_tile_size, device, plugins, strategies). Bad options raise
    :class:`ruyi.errors.RuyiUserError` subclasses before any weight loads.
    """
    from ruyi.checkpoints.student import check_student
    from ruyi.hydra_config import preset_names

    if isinstance(path, str) and path in preset_names() and not Path(path).exists():
        plan = PipelineSpec.from_preset(path, **options).validate()
    else:
        plan = PipelineSpec.from_names(path, **options).validate()
    check_student(plan)  # a distilled student (its folder or a LoRA) with the sampler it was made for
    return build(plan, weights=weights)


# -- helpers ---------------------------------------------------------------------------------
def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ConfigError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}") from None


def _dtype_name(dtype: str | torch.dtype) -> str:
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in DTYPES.items() if "1" in k or "3" in k}  # float32, bfloat16, float16
        if dtype not in names:
            raise ConfigError(f"dtype={dtype} is not one of {', '.join(DTYPES)}")
        return names[dtype]
    return str(dtype)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda when present else cpu; an absent or unknown device is a clear error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not supported; use auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise AcceleratorRequired(
                f"device={device} was asked for but no CUDA GPU is visible; use device=cpu (slow) or run on a GPU"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise AcceleratorRequired(f"device={device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return resolved


def _check_int(name: str, value: Any, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"{name}={value!r} must be an integer >= 0 ({hint})")


def _check_sampler_options(sampler: Component) -> None:
    for key, value in dict(sampler.options).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"sampler.{key}={value!r} must be finite")


def _plugin_component(plugin: Any) -> Component:
    if isinstance(plugin, Component):
        return plugin
    if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
        return Component("plugin", plugin[0], dict(plugin[1]))
    return Component.of("plugin", plugin)


__all__ = [
    "Component", "ModelSource", "PipelineSpec", "Plan", "RuyiUserError", "STAGES", "attach", "build",
    "load_pipeline", "parse_dtype", "resolve_device",
]  # fmt: skip
