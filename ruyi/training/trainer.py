"""A Lightning ``Trainer`` from the ``trainer`` config group (``configs/trainer/{default,ddp,fsdp}.yaml``).

Every key of the group is a ``lightning.pytorch.Trainer`` keyword, except four that ruyi turns
into objects: ``strategy`` (a name, or a node with ``name: ddp|fsdp`` and the strategy's options;
FSDP's ``auto_wrap`` / ``activation_checkpointing`` list module classes by import path),
``precision: auto`` (bf16-mixed on a GPU, 32-true on the CPU), ``logger`` (csv, tensorboard or
none), ``checkpoint_every_n_steps``, ``progress_refresh_rate`` (0 hides the bar) and
``callbacks`` (extra Lightning callbacks as ``{_target_: ..., ...}`` nodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ruyi.errors import AcceleratorRequired, ConfigError

RUYI_KEYS = ("strategy", "precision", "logger", "checkpoint_every_n_steps", "progress_refresh_rate", "callbacks")
LOGGERS = ("csv", "tensorboard", "none")


def _class(path: str) -> type:
    from hydra.utils import get_class

    try:
        return get_class(path)
    except Exception as err:  # noqa: BLE001 - hydra raises several kinds; all mean the same to a user
        raise ConfigError(f"trainer.strategy names a module class {path!r} that cannot be imported ({err})") from None


def uses_gpu(options: Mapping[str, Any]) -> bool:
    return options.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def check_trainer(options: Mapping[str, Any]) -> None:
    """What can fail before any weights load: unknown strategy or logger, FSDP without CUDA."""
    strategy = options.get("strategy") or "auto"
    name = strategy if isinstance(strategy, str) else strategy.get("name")
    if not isinstance(strategy, str) and name not in ("ddp", "fsdp"):
        raise ConfigError(f"trainer.strategy.name={name!r} is not ddp or fsdp")
    if name == "fsdp" and not uses_gpu(options):
        raise AcceleratorRequired(
            "trainer=fsdp shards the model over CUDA GPUs and none is visible; use trainer=default or trainer=ddp"
        )
    if options.get("logger", "csv") not in LOGGERS:
        raise ConfigError(f"trainer.logger={options.get('logger')!r} is not one of {', '.join(LOGGERS)}")


def build_strategy(strategy: str | Mapping[str, Any] | None):
    if strategy is None or isinstance(strategy, str):
        return strategy or "auto"
    options = dict(strategy)
    name = options.pop("name")
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(**options)
    from lightning.pytorch.strategies import FSDPStrategy

    wrap = {_class(p) for p in options.pop("auto_wrap", None) or ()}
    recompute = {_class(p) for p in options.pop("activation_checkpointing", None) or ()}
    return FSDPStrategy(auto_wrap_policy=wrap or None, activation_checkpointing_policy=recompute or None, **options)


def build_trainer(options: Mapping[str, Any], *, output_dir: Path, extra_callbacks=()):
    """The Trainer; checkpoints go to ``output_dir/checkpoints``, logs to ``output_dir/logs``.

    Built before any weights load: constructing it writes nothing, and it is where Lightning
    decides whether this machine can run the precision, strategy and devices asked for; a refusal
    is one ``ConfigError`` line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ruyi.training.checks import trainer_error

    check_trainer(options)
    try:
        return _trainer(options, output_dir=output_dir, extra_callbacks=extra_callbacks)
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise trainer_error(err) from None


def _trainer(options: Mapping[str, Any], *, output_dir: Path, extra_callbacks=()):
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from ruyi.training.checkpoints import AtomicCheckpointIO

    kwargs = {k: v for k, v in options.items() if k not in RUYI_KEYS}
    precision = options.get("precision", "auto")
    if precision == "auto":
        precision = "bf16-mixed" if uses_gpu(options) else "32-true"
    callbacks = [*extra_callbacks, *(instantiate(node) for node in options.get("callbacks") or ())]
    refresh = int(options.get("progress_refresh_rate", 1))
    if refresh:
        callbacks.append(TQDMProgressBar(refresh_rate=refresh))
    else:
        kwargs["enable_progress_bar"] = False
    every = options.get("checkpoint_every_n_steps")
    if every:
        callbacks.append(ModelCheckpoint(dirpath=output_dir / "checkpoints", every_n_train_steps=int(every), save_top_k=1))
    logger: Any = False
    if options.get("logger", "csv") == "csv":
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(save_dir=output_dir, name="logs", version="")
    elif options.get("logger") == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(save_dir=output_dir, name="logs", version="")
    if logger is not False:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    return L.Trainer(
        strategy=build_strategy(options.get("strategy")), precision=precision, logger=logger, callbacks=callbacks,
        default_root_dir=output_dir, enable_checkpointing=bool(every), plugins=[AtomicCheckpointIO()], **kwargs,
    )  # fmt: skip
