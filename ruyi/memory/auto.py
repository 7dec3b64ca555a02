"""``memory=auto``: the fastest measured combination that fits the free GPU memory.

When it decides: at validation, before any weight loads, from the free memory of the device and
the shape the config asks for (``frames``, ``base_resolution`` / ``video_size``; the YAML reads
them from the run's config). The decision that matters most, where the 14 GB of transformer
weights live (resident, or streamed from pinned host memory), has to be made before loading and
cannot change per call without moving them again; the cheaper options are chosen with it so the
plan that is logged is the plan that runs. A call with a larger shape than planned is logged as a
warning when its denoising starts. Without hints the plan covers 120 frames at 768 px, the largest
video the model was trained for, so a Python caller who passes nothing is on the safe side.

It settles ``offload``, ``skip_steps`` and ``vae_tile_size`` itself (through ``resolve(plan)``,
which ``PipelineSpec.validate`` calls before the checks), so a config that also sets them is
refused; the memory options it picks attach like ``memory=combo``. Every candidate plan must pass
every component's ``check`` (a plugin that cannot run with streamed weights rules those rows out).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ruyi.errors import ConfigError, RuyiUserError
from ruyi.memory.base import MemoryOption
from ruyi.memory.combo import build_options
from ruyi.memory.host import ModelBytes, host_peak_gib, host_ram_gib, stored_share
from ruyi.memory.rules import RULES, Rule
from ruyi.models.loading import meta_model, read_config
from ruyi.models.transformer.inputs import VAE_SPATIAL, VAE_TEMPORAL
from ruyi.registry import MEMORIES

log = logging.getLogger(__name__)
GIB = 1024**3


def free_gpu_gib(device: torch.device) -> float:
    """Free memory of a CUDA device as the driver reports it (other processes' use included)."""
    free, _total = torch.cuda.mem_get_info(device)
    return free / GIB


@dataclasses.dataclass(frozen=True)
class Choice:
    rule: Rule
    peak_gib: float
    step_ratio: float
    measured_at: tuple[int, int]
    fits: bool
    host_gib: float = 0.0
    host_measured: bool = False


def choose(
    rules: Sequence[Rule], *, side: float, frames: int, budget_gib: float,
    host_gib: Mapping[str, tuple[float, bool]] | None = None, host_budget_gib: float = math.inf,
) -> tuple[Choice, list[Choice]]:  # fmt: skip
    """The fastest rule whose predicted GPU peak fits ``budget_gib`` and whose host peak
    (``host_gib[name]``: GiB, measured?) fits ``host_budget_gib`` (ties: the smaller GPU peak), or
    the smallest predicted GPU peak among those that fit the host (else overall) when none fits;
    and every candidate, as predicted."""
    if not rules:
        raise ConfigError("memory=auto has no candidate combination for this plan")
    host_gib = host_gib or {}
    predicted = []
    for rule in rules:
        peak, ratio, ref = rule.predict(side, frames)
        host, measured = host_gib.get(rule.name, (0.0, False))
        predicted.append(Choice(rule, peak, ratio, ref, peak <= budget_gib and host <= host_budget_gib, host, measured))
    fitting = [c for c in predicted if c.fits]
    if fitting:
        return min(fitting, key=lambda c: (c.step_ratio, c.peak_gib)), predicted
    in_ram = [c for c in predicted if c.host_gib <= host_budget_gib] or predicted
    return min(in_ram, key=lambda c: (c.peak_gib, c.host_gib)), predicted


@MEMORIES.register("auto")
class MemoryAuto(MemoryOption):
    """``frames`` / ``base_resolution`` / ``video_size``: the shape to plan for; a video longer than
    ``segment_frames`` is made one segment at a time, so the plan is for one segment. ``budget_gib``:
    plan for this much free memory instead of what the device has now (e.g. 8 for an 8 GB card).
    ``headroom``: share of the budget left for the allocator's rounding and fragmentation (the
    rules count allocated bytes, a card must also hold the cached ones)."""

    def __init__(
        self,
        *,
        frames: int = 120,
        base_resolution: int = 768,
        video_size: Sequence[int] | None = None,
        budget_gib: float | None = None,
        headroom: float = 0.1,
        host_budget_gib: float | None = None,
        segment_frames: int | None = None,
    ) -> None:
        if budget_gib is not None and not budget_gib > 0:
            raise ConfigError(f"memory.budget_gib={budget_gib!r} must be a positive number of GiB (or null)")
        if host_budget_gib is not None and not host_budget_gib > 0:
            raise ConfigError(f"memory.host_budget_gib={host_budget_gib!r} must be a positive number of GiB (or null)")
        self.host_budget_gib = host_budget_gib
        if not 0 <= headroom < 1:
            raise ConfigError(f"memory.headroom={headroom!r} must lie in [0, 1)")
        self.frames, self.base_resolution = int(frames), int(base_resolution)
        if segment_frames is not None:
            self.frames = min(self.frames, int(segment_frames))
        self.video_size = None if video_size is None else tuple(int(v) for v in video_size)
        self.budget_gib, self.headroom = budget_gib, float(headroom)
        self.choice: Choice | None = None
        self._options: list[MemoryOption] = []
        self._watch: PlannedShape | None = None
        self._shares: dict[tuple[str, torch.dtype], float] = {}

    @property
    def side(self) -> float:
        """The square side with the requested area (buckets keep about base_resolution^2 pixels)."""
        if self.video_size is not None:
            return math.sqrt(self.video_size[0] * self.video_size[1])
        return float(self.base_resolution)

    @property
    def splits_batch(self) -> bool:  # type: ignore[override]
        return any(o.splits_batch for o in self._options)

    # -- before any weight loads ---------------------------------------------------------------
    def resolve(self, plan):
        """The plan with offload, skip_steps, VAE tiles and memory options settled (see module doc)."""
        spec = plan.spec
        chosen = {
            "offload": spec.offload.name != "none",
            "skip_steps": spec.skip_steps,
            "vae_tile_size": spec.vae_tile_size,
        }
        taken = [k for k, v in chosen.items() if v]
        if taken:
            raise ConfigError(
                f"memory=auto chooses {', '.join(chosen)} itself, but the config also sets {', '.join(taken)}; "
                "drop those, or pick memory options by hand (memory=combo)"
            )
        if plan.device.type != "cuda":
            log.info(
                "memory=auto: device %s has no GPU memory budget to plan for; nothing changes", plan.device
            )
            return plan
        free = self.budget_gib if self.budget_gib is not None else free_gpu_gib(plan.device)
        budget = free * (1.0 - self.headroom)
        ram = self.host_budget_gib if self.host_budget_gib is not None else host_ram_gib()
        host_budget = ram * (1.0 - self.headroom)
        candidates = {r.name: p for r in RULES if (p := self._candidate(plan, r)) is not None}
        rules = [r for r in RULES if r.name in candidates]
        host = {r.name: self._host_peak(candidates[r.name], r) for r in rules}
        choice, predicted = choose(rules, side=self.side, frames=self.frames, budget_gib=budget,
                                   host_gib=host, host_budget_gib=host_budget)  # fmt: skip
        self.choice = choice
        self._options = build_options(choice.rule.memory, choice.rule.memory_options)
        self._log(free, budget, choice, predicted, host_budget)
        return candidates[choice.rule.name]

    def _host_peak(self, candidate, rule: Rule) -> tuple[float, bool]:
        """(GiB, measured) of the process's peak host memory under ``rule`` for the planned shape."""
        shape = (round(self.side), self.frames)
        if shape in rule.host_gib:
            return rule.host_gib[shape], True
        model = ModelBytes.of(candidate.spec.model.arch, candidate.spec.model.path)
        copies = candidate.offload.host_copies(candidate)
        return host_peak_gib(
            model=model, dtype_bytes=candidate.dtype.itemsize, side=self.side, frames=self.frames,
            host_copies=copies.transformer, other_copies=copies.others, streams=copies.in_place,
            stored_share=self._stored_share(candidate), skip_steps=rule.skip_steps,
            cfg_split="cfg_split" in rule.memory, vae_stream="vae_stream" in rule.memory,
        ), False  # fmt: skip

    def _stored_share(self, candidate) -> float:
        """The transformer's bytes under the plan's precision over its bytes in the pipeline's dtype,
        from the model built on the meta device (1.0 when nothing says its shape)."""
        precision = candidate.precision
        if getattr(precision, "plain_weights", False):
            return 1.0
        key = (repr(precision), candidate.dtype)
        if key not in self._shares:  # one meta build per plan, not per candidate
            self._shares[key] = self._measure_share(candidate)
        return self._shares[key]

    def _measure_share(self, candidate) -> float:
        precision = candidate.precision
        cls = candidate.spec.transformer.cls
        config = dict((candidate.spec.model.arch or {}).get("transformer_arch") or {})
        path = candidate.spec.model.path
        if not config and path is not None and (Path(path) / cls.subfolder / "config.json").is_file():
            config = read_config(Path(path) / cls.subfolder)
        if not config:
            return 1.0
        model = meta_model(cls, {**config, **(getattr(cls, "config_overrides", None) or {})})
        return stored_share(model, precision, candidate.dtype.itemsize)

    def _candidate(self, plan, rule: Rule):
        """The plan this rule makes, if every component accepts it; None otherwise."""
        spec = plan.spec
        offload = dataclasses.replace(spec.offload, name=rule.offload, options=dict(rule.offload_options))
        spec = spec.replace(offload=offload, skip_steps=rule.skip_steps, vae_tile_size=rule.vae_tile_size)
        candidate = dataclasses.replace(plan, spec=spec, offload=offload.create())
        try:
            for option in build_options(rule.memory, rule.memory_options):
                option.check(candidate)
            for obj in candidate.components():
                if obj is not self and callable(getattr(obj, "check", None)):
                    obj.check(candidate)
        except RuyiUserError as err:
            log.info("memory=auto: %s ruled out: %s", rule.name, err)
            return None
        return candidate

    def _log(self, free: float, budget: float, choice: Choice, predicted: list[Choice], host_budget: float) -> None:
        rule = choice.rule
        settings = f"offload={rule.offload} skip_steps={rule.skip_steps} vae_tile_size={rule.vae_tile_size}"
        settings += "".join(f" offload.{k}={v}" for k, v in rule.offload_options.items())
        if rule.memory:
            settings += f" memory=[{','.join(rule.memory)}]"
        faster = [c for c in predicted if c.step_ratio < choice.step_ratio and not c.fits]
        why = (
            "; faster but too large: " + ", ".join(f"{c.rule.name} {c.peak_gib:.1f} GiB GPU / {c.host_gib:.1f} GiB RAM" for c in faster)
            if faster
            else ""
        )
        host = f"host RAM peak {choice.host_gib:.1f} GiB ({'measured' if choice.host_measured else 'predicted'}; budget {host_budget:.1f})"
        shape = f"{self.frames} frames at {self.side:.0f}x{self.side:.0f}"
        message = (
            f"memory=auto: {free:.1f} GiB free, {budget:.1f} GiB after {self.headroom:.0%} headroom, for {shape}: "
            f"{rule.name} ({settings}), predicted peak {choice.peak_gib:.1f} GiB, {host}, at {choice.step_ratio:.2f}x the "
            f"offload=none step (from {choice.measured_at[0]}px x {choice.measured_at[1]} frames; {rule.source}){why}"
        )
        if choice.fits:
            log.info(message)
        else:
            log.warning("%s; NOTHING measured fits, this is the smallest and may run out of memory", message)

    # -- after the weights are there -----------------------------------------------------------
    def apply(self, pipe) -> None:
        for option in self._options:
            option.apply(pipe)
        if self.choice is not None:
            self._watch = PlannedShape(self.frames, self.side)
            pipe.callbacks.append(self._watch)

    def remove(self, pipe) -> None:
        for option in reversed(self._options):
            option.remove(pipe)
        if self._watch in pipe.callbacks:
            pipe.callbacks.remove(self._watch)
        self._watch = None

    def __repr__(self) -> str:
        picked = "undecided" if self.choice is None else self.choice.rule.name
        return f"MemoryAuto({picked}, frames={self.frames}, side={self.side:.0f})"


class PlannedShape:
    """Loop callback: warns when a call denoises more latent pixels than ``memory=auto`` planned for."""

    def __init__(self, frames: int, side: float) -> None:
        self.frames, self.side = frames, side

    def on_loop_begin(self, state) -> None:
        _, _, latent_frames, h, w = state.latents.shape
        planned = (1 if self.frames == 1 else self.frames // VAE_TEMPORAL) * (self.side / VAE_SPATIAL) ** 2
        if latent_frames * h * w > planned * 1.001:
            log.warning(
                "this call (%d latent frames of %dx%d) is larger than memory=auto planned for (%d frames at %.0f px); "
                "it may run out of memory: pass its frames/base_resolution to memory=auto",
                latent_frames, h, w, self.frames, self.side,
            )  # fmt: skip
