"""``eval=on``: every job of a sweep judged against the reference video of the same request.

The reference is the job's request (image, end image, seed, camera, motion, frames, size) on the
job's model and device, made with everything else at the config's defaults plus the overrides in
``eval.reference`` (``[sampler=ddim, steps=50]``). It is made once per distinct request through the
one assembly path (``build(PipelineSpec.from_config(...))``) and cached as lossless frames in
``eval.cache/<key>.npz``; the key hashes the whole resolved reference config, the images' bytes
and the checkpoint's files, so later jobs and later sweeps reuse it and a changed input makes a
new one. Each job then appends one JSON line to ``eval.out`` (its overrides, seconds, peak GPU
memory, the metrics of :mod:`ruyi.eval.metrics`) in one ``write`` on an ``O_APPEND`` descriptor,
so jobs running in parallel (submitit) never interleave their lines.

Videos are compared as the uint8 frames the pipeline made (what a PNG output holds), before the
mp4 encoder, so a lossless lever scores exactly 100 dB.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ruyi.errors import ConfigError

log = logging.getLogger(__name__)

GIB = 1024**3
# what a request is: the reference keeps the job's values of these (everything else: defaults)
REQUEST_KEYS = ("image", "end_image", "seed", "camera", "motion", "frames", "frames_rounding", "base_resolution",
                "video_size")  # fmt: skip
# the job's, not a lever: which weights and where they run
IDENTITY_KEYS = ("model", "device", "download", "bench.weights", "bench.resolution")
# keys that do not change the video (left out of the cache key)
BOOKKEEPING_KEYS = ("output", "overwrite", "fps", "progress", "eval", "download", "bench")
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class SweepEval:
    """The checked ``eval`` block of a config: what to measure, how the reference is made, where
    results and references go."""

    metrics: tuple[str, ...]
    reference: tuple[str, ...]
    out: Path
    cache: Path
    config_name: str = "infer"
    config_dir: Path = DEFAULT_CONFIG_DIR

    @classmethod
    def from_config(cls, cfg: Any, *, config_name: str | None = None, config_dir: Path | None = None) -> SweepEval | None:
        """None when ``eval`` is off; else every value checked (one-line :class:`ConfigError`) and
        the reference config composed once, so a bad ``eval.reference`` fails before any weights."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import to_absolute_path

        node = cfg.get("eval")
        if node is None:
            return None
        if config_name is None:
            config_name = HydraConfig.get().job.config_name if HydraConfig.initialized() else "infer"
        judge = cls(
            metrics=_metric_names(node.get("metrics")),
            reference=_reference_overrides(node.get("reference")),
            out=_writable(Path(to_absolute_path(_text("eval.out", node.get("out")))), "eval.out", folder=False),
            cache=_writable(Path(to_absolute_path(_text("eval.cache", node.get("cache")))), "eval.cache", folder=True),
            config_name=str(config_name),
            config_dir=Path(config_dir or DEFAULT_CONFIG_DIR),
        )
        judge.reference_config(cfg)
        return judge

    # -- the reference -------------------------------------------------------------------------
    def reference_config(self, cfg: Any):
        """The config that makes the reference of ``cfg``'s request: defaults + ``eval.reference``,
        with the job's request, model and device."""
        from omegaconf import OmegaConf, open_dict

        ref = self._compose(list(self.reference))
        with open_dict(ref):
            for key in (*REQUEST_KEYS, *IDENTITY_KEYS):
                value = OmegaConf.select(cfg, key, default=None)
                if value is not None or OmegaConf.select(ref, key, default=None) is not None:
                    OmegaConf.update(ref, key, OmegaConf.to_container(value, resolve=True)
                                     if OmegaConf.is_config(value) else value, merge=False)  # fmt: skip
            ref.eval = None
        return ref

    def _compose(self, overrides: list[str]):
        """``hydra.compose`` inside a Hydra job (its search path); Hydra's compose API elsewhere."""
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import HydraException

        try:
            if GlobalHydra.instance().is_initialized():
                return compose(config_name=self.config_name, overrides=overrides)
            with initialize_config_dir(config_dir=str(self.config_dir), version_base=None):
                return compose(config_name=self.config_name, overrides=overrides)
        except HydraException as err:
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise ConfigError(f"eval.reference={list(self.reference)} does not compose: {first}") from None

    def reference_key(self, ref: Any) -> str:
        """A hash of everything that decides the reference video."""
        from omegaconf import OmegaConf

        from ruyi.assembly import resolve_device

        plain = OmegaConf.to_container(ref, resolve=True)
        for key in BOOKKEEPING_KEYS:
            plain.pop(key, None)
        start, end = _image_digest(ref.image), _image_digest(ref.end_image)
        weights = OmegaConf.select(ref, "bench.weights", default="checkpoint")
        plain.update(image=start, end_image=end, device=resolve_device(ref.device).type, weights=_weights_identity(ref, weights))
        return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def reference_frames(self, ref: Any, key: str) -> tuple[np.ndarray, bool]:
        """The cached reference frames of ``key`` (uint8 ``(F, H, W, 3)``), made now if missing;
        and whether they were made now. Jobs sharing the cache take turns (a folder lock)."""
        path = self.cache / f"{key}.npz"
        self.cache.mkdir(parents=True, exist_ok=True)
        with _locked(self.cache):
            if path.is_file():
                log.info("eval: reference %s from the cache (%s)", key, path)
                with np.load(path) as stored:
                    return stored["frames"], False
            log.info("eval: making the reference %s (%s)", key, " ".join(self.reference) or "the defaults")
            began = time.perf_counter()
            frames = make_reference(ref)
            meta = {"reference": list(self.reference), "request": _request(ref), "seconds": time.perf_counter() - began}
            _save_npz(path, frames=frames, meta=np.array(json.dumps(meta)))
        return frames, True

    # -- one job's result ------------------------------------------------------------------------
    def record(self, cfg: Any, video, *, seconds: float, peak_gib: float | None, cpu_seconds: float | None = None,
               video_path: str | Path | None = None, overrides: Sequence[str] | None = None,
               notes: dict | None = None) -> dict:  # fmt: skip
        """Judge the job's ``video`` against its reference, append the JSON line to ``eval.out``
        and return it. ``cpu_seconds``: the process's CPU time for the video (on a shared machine,
        with one thread, steadier than the wall time). Call after the job's pipeline is gone: the
        reference may need its memory."""
        from omegaconf import OmegaConf

        from ruyi.eval import evaluate
        from ruyi.hydra_config import job_overrides, request_images
        from ruyi.io import to_frames

        gc.collect()  # the job's pipeline (its hooks hold cycles) before a second one is built
        frames = to_frames(video) if not isinstance(video, np.ndarray) else video
        ref = self.reference_config(cfg)
        key = self.reference_key(ref)
        reference, made = self.reference_frames(ref, key)
        start, end = request_images(cfg)
        metrics = evaluate(frames, reference=reference, image=start, end_image=end, camera=cfg.camera,
                           motion=str(cfg.motion), metrics=self.metrics)  # fmt: skip
        line = {
            "overrides": list(job_overrides() if overrides is None else overrides),
            "seconds": round(float(seconds), 4),
            "cpu_seconds": None if cpu_seconds is None else round(float(cpu_seconds), 4),
            "peak_gib": None if peak_gib is None else round(float(peak_gib), 4),
            "device": _device_type(cfg.device),
            "weights": OmegaConf.select(cfg, "bench.weights", default="checkpoint"),
            "video": None if video_path is None else str(video_path),
            "shape": list(frames.shape[:3]),
            "steps": OmegaConf.select(cfg, "steps"),
            "request": _request(cfg),
            "reference": {"key": key, "overrides": list(self.reference), "made_now": made},
            "notes": notes or {},
            "metrics": metrics,
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        append_line(self.out, line)
        log.info("eval: %s -> %s", summary(metrics), self.out)
        return line


def make_reference(ref: Any) -> np.ndarray:
    """The reference video of config ``ref`` as uint8 frames, through the one assembly path."""
    from omegaconf import OmegaConf

    from ruyi.assembly import PipelineSpec, build
    from ruyi.hydra_config import request_images, request_kwargs
    from ruyi.io import to_frames

    weights = OmegaConf.select(ref, "bench.weights", default="checkpoint")
    pipe = build(PipelineSpec.from_config(ref).validate(), weights=weights)
    start, end = request_images(ref)
    video = pipe(start, end, frames_rounding=ref.get("frames_rounding", "error"), progress=False, **request_kwargs(ref))
    return to_frames(video)


def summary(metrics: dict) -> str:
    parts = []
    for key, fmt in (("psnr", "psnr {:.2f} dB"), ("ssim", "ssim {:.4f}"), ("flicker", "flicker {:.2f}")):
        if metrics.get(key) is not None:
            parts.append(fmt.format(metrics[key]))
    if metrics.get("camera_direction") is not None:
        parts.append(f"camera {metrics['camera_direction']}")
    return ", ".join(parts) or "no metric applied"


# -- measuring a job ---------------------------------------------------------------------------
def reset_peak_memory(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device) -> float | None:
    """Peak allocated GPU memory since the last reset (None on the CPU)."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / GIB


def notes_of(pipe) -> dict:
    """What attached extensions report after a run (TeaCache's skipped steps)."""
    return {type(c).__name__: {"skipped_steps": c.skipped_steps} for c in pipe.callbacks if hasattr(c, "skipped_steps")}


def append_line(path: Path, record: dict) -> None:
    """One JSON line appended in one ``write`` to an ``O_APPEND`` descriptor: safe for jobs that
    append at the same time."""
    data = (json.dumps(record, default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise OSError(f"short write to {path}: {written} of {len(data)} bytes")


# -- checks ------------------------------------------------------------------------------------
def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}={value!r} must be a path")
    return value


def _metric_names(value: Any) -> tuple[str, ...]:
    from omegaconf import ListConfig

    from ruyi.registry import METRICS

    if not isinstance(value, (list, tuple, ListConfig)) or not value:
        raise ConfigError(f"eval.metrics={value!r} must be a list of metric names, e.g. [psnr,ssim,camera]")
    names = tuple(str(v) for v in value)
    for name in names:
        if name not in METRICS:
            raise ConfigError(f"eval.metrics: {name!r} is not a metric; valid names: {', '.join(METRICS.names())}")
    if len(set(names)) != len(names):
        raise ConfigError(f"eval.metrics={list(names)} names a metric twice")
    return names


def _reference_overrides(value: Any) -> tuple[str, ...]:
    """``eval.reference``: ``key=value`` overrides of settings only (not of the request or model)."""
    from omegaconf import ListConfig

    if value is None:
        return ()
    if not isinstance(value, (list, tuple, ListConfig)) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"eval.reference={value!r} must be a list of key=value overrides, e.g. [sampler=ddim,steps=50]")
    for item in value:
        key = item.split("=", 1)[0].lstrip("+~").split("@")[0]
        fixed = next((k for k in (*REQUEST_KEYS, *IDENTITY_KEYS, "eval", "hydra") if key == k or key.startswith(k + ".")), None)
        if fixed:
            raise ConfigError(
                f"eval.reference: {item!r} changes the {fixed}; the reference keeps each job's request, model and "
                "device, and changes settings only (e.g. sampler=ddim, steps=50)"
            )
    return tuple(str(v) for v in value)


def _writable(path: Path, name: str, *, folder: bool) -> Path:
    """``path`` can be created or appended to: its nearest existing folder accepts a file."""
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{name}={path} is a file; give a folder for the cached reference videos")
    if not folder:
        if path.is_dir():
            raise ConfigError(f"{name}={path} is a folder; give a .jsonl file the results are appended to")
        if path.suffix != ".jsonl":
            raise ConfigError(f"{name}={path}: give a .jsonl file (one JSON line per job is appended)")
    start = path if folder else path.parent
    for existing in (start, *start.parents):
        if existing.exists():
            break
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={path}: cannot write in {existing}; pick a writable location")
    return path


# -- helpers -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (POSIX ``flock``; no lock where that is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: concurrent jobs may both make a reference (same bytes)
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Through ``ruyi.files.atomic_file``: a reader never sees half a file, a full disk is one line."""
    from ruyi.files import atomic_file

    with atomic_file(path, suffix=".npz", what="the reference video") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def _image_digest(image: Any) -> str | None:
    if image is None:
        return None
    from hydra.utils import to_absolute_path

    path = Path(to_absolute_path(str(image)))
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else str(path)


def _weights_identity(ref: Any, weights: str) -> Any:
    """Random weights are the preset's shape and seeds (already in the key); a checkpoint is its
    files' names, sizes and modification times (hashing 17 GB would take minutes)."""
    if weights == "random":
        return "random"
    from ruyi.assembly import PipelineSpec

    path = PipelineSpec.from_config(ref).model.path
    if path is None or not Path(path).is_dir():
        return str(path)
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in Path(path).rglob("*") if p.is_file() and ".cache" not in p.parts)  # fmt: skip


def _request(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    out = {}
    for key in REQUEST_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def _device_type(device: Any) -> str:
    from ruyi.assembly import resolve_device

    return resolve_device(device).type
