"""Every training value checked before any weight loads: one line naming the key and the fix.

What Lightning itself decides (which precision, strategy, accelerator and device count this
machine can run) is asked of Lightning: ``build_run`` constructs the ``Trainer`` before the
weights, and a refusal there is turned into the same one-line ``ConfigError``
(:func:`trainer_error`). The rest — numbers that would give a NaN loss, a step count of zero, a
clip length the VAE cannot encode, a missing resume file — is checked here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruyi.checks import check_int, check_number
from ruyi.errors import ConfigError, InputError
from ruyi.pipeline import FRAME_MULTIPLE, MAX_FRAMES
from ruyi.training.module import SCHEDULES

MAX_STEPS = 10**9
DURATION = re.compile(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}")  # Lightning's "DD:HH:MM:SS"


def check_training(cfg: Any) -> None:
    """The top-level keys of configs/train.yaml, the data clip length and the trainer's numbers."""
    check_int("trainer.max_steps", cfg.trainer.max_steps, low=1, high=MAX_STEPS, hint="optimizer steps, e.g. 1000")
    check_number("learning_rate", cfg.learning_rate, low=0, low_open=True, high=1, hint="e.g. 1e-4 for LoRA")
    check_number("weight_decay", cfg.weight_decay, low=0, high=1, hint="e.g. 0.01; 0 = none")
    check_int("warmup_steps", cfg.warmup_steps, low=0, hint="linear warm-up steps; 0 = none")
    check_int("batch_size", cfg.batch_size, low=1, high=4096, hint="clips per step and device")
    if cfg.num_workers != "auto":
        check_int("num_workers", cfg.num_workers, low=0, high=256,
                  hint="DataLoader processes; auto = what the machine has; 0 = load in the main process")  # fmt: skip
    # Lightning seeds numpy, which takes 32 bits; a larger seed would be replaced by a random one
    check_int("seed", cfg.seed, low=0, high=2**32 - 1)
    for key in ("uncond_prob", "end_frame_prob"):
        check_number(key, cfg[key], low=0, high=1, hint="a share of the samples")
    check_masks(cfg)
    for key in ("gradient_checkpointing", "cache_latents"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r} must be true or false")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"schedule={cfg.schedule!r} is not one of {', '.join(SCHEDULES)}")
    check_duration("steps_for_time", cfg.steps_for_time)
    check_resume(cfg.resume)
    check_data(cfg.data)
    check_trainer_numbers(cfg.trainer)


def check_masks(cfg: Any) -> None:
    """``known_frames`` (random known-frame masks) replaces ``end_frame_prob``: not both."""
    from omegaconf import OmegaConf

    from ruyi.training.inputs import check_known_frames

    shares = cfg.get("known_frames")
    if shares is None:
        if cfg.data.get("turn_prob"):
            raise ConfigError("data.turn_prob needs known_frames (the frames before a turn condition the sample); "
                              "set known_frames, e.g. {start: 1, prefix: 1}")  # fmt: skip
        return
    check_known_frames(OmegaConf.to_container(shares, resolve=True) if OmegaConf.is_config(shares) else shares)
    if cfg.end_frame_prob:
        raise ConfigError(
            f"known_frames and end_frame_prob={cfg.end_frame_prob} both choose the conditioning frames; set "
            "end_frame_prob=0 (known_frames.start_end is the share with an end frame)"
        )


def check_duration(key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for unit, amount in value.items():
            check_int(f"{key}.{unit}", amount, low=0)
        return
    if not isinstance(value, str) or not DURATION.fullmatch(value):
        raise ConfigError(f"{key}={value!r} must be DD:HH:MM:SS, e.g. 00:02:00:00 for two hours")


def check_resume(resume: Any) -> None:
    """``resume`` names an existing Lightning checkpoint file (relative to where the run started)."""
    if resume is None:
        return
    from hydra.utils import to_absolute_path

    path = Path(to_absolute_path(str(resume)))
    fix = "give a checkpoint file of an earlier run (<output_dir>/checkpoints/<x>.ckpt)"
    if path.is_dir():
        raise InputError(f"resume={path} is a folder; {fix}")
    if not path.is_file():
        raise InputError(f"resume={path} does not exist; {fix}")


def check_data(data: Any) -> None:
    """Clip lengths the VAE encodes and inference generates: 1, or a multiple of 8 up to 120."""
    frames = data.get("frames") if hasattr(data, "get") else None
    if frames is None:
        return
    frames = check_int("data.frames", frames, low=1, high=MAX_FRAMES)
    if frames != 1 and frames % FRAME_MULTIPLE:
        raise ConfigError(
            f"data.frames={frames} is invalid: the VAE encodes 1 frame or a multiple of {FRAME_MULTIPLE} "
            f"(up to {MAX_FRAMES}); use e.g. {max(FRAME_MULTIPLE, frames // FRAME_MULTIPLE * FRAME_MULTIPLE)}"
        )


def check_trainer_numbers(trainer: Any) -> None:
    """The numeric Trainer keys of configs/trainer/*.yaml (Lightning checks the choices)."""
    get = trainer.get
    check_int("trainer.accumulate_grad_batches", get("accumulate_grad_batches", 1), low=1, high=10**6)
    check_int("trainer.log_every_n_steps", get("log_every_n_steps", 50), low=1)
    check_int("trainer.num_nodes", get("num_nodes", 1), low=1)
    check_int("trainer.progress_refresh_rate", get("progress_refresh_rate", 1), low=0, hint="0 hides the bar")
    if get("gradient_clip_val") is not None:
        check_number("trainer.gradient_clip_val", get("gradient_clip_val"), low=0, hint="null or 0: no clipping")
    if get("checkpoint_every_n_steps") is not None:
        check_int("trainer.checkpoint_every_n_steps", get("checkpoint_every_n_steps"), low=1, hint="null: no checkpoints")
    check_duration("trainer.max_time", get("max_time"))
    devices = get("devices", "auto")
    # Lightning also takes "0,1" (indices) and "2" (a count) as strings; it checks those itself
    if not (devices == "auto" or devices == -1 or _device_list(devices) or isinstance(devices, str)):
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            raise ConfigError(
                f"trainer.devices={devices!r} must be auto, -1 (all), a count >= 1 or a list of device indices"
            )


def _device_list(devices: Any) -> bool:
    try:
        items = list(devices) if not isinstance(devices, (str, int)) else None
    except TypeError:
        return False
    return bool(items) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items)


def trainer_error(err: Exception) -> ConfigError:
    """Lightning's refusal of a Trainer option (precision, strategy, devices...) as one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines)[:400] or type(err).__name__
    return ConfigError(f"the trainer options cannot run here: {text}")
