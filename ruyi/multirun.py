"""Hydra multirun jobs: each names its output by the values it sweeps, and none replaces an
earlier sweep's files.

``python scripts/infer.py -m sampler=euler,ddim steps=5`` writes ``outputs/ruyi_sampler=euler.mp4``
and ``outputs/ruyi_sampler=ddim.mp4``. The entry script tells Hydra which overrides are fixed
(:func:`naming_overrides` sets ``hydra.job.config.override_dirname.exclude_keys``, Hydra's own knob
for naming a job by some of its overrides), so each job knows its swept values even in a fresh
process (submitit). A video that already exists — an earlier sweep's — is refused before anything
runs, naming the file and the fix (this sweep's own ``output=``, or ``overwrite=true``).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ruyi.errors import OutputError

EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"
MAX_NAME = 200  # bytes of a file name the swept values may take (file systems allow 255)
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def _parse(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def naming_overrides(argv: Sequence[str]) -> list[str]:
    """The override that leaves only the swept keys in each job's ``hydra.job.override_dirname``
    ([] outside a multirun, or where the command line sets it itself)."""
    from ruyi.overrides import _hydra_args

    args = _hydra_args(argv)
    if args is None or not args.multirun or any(o.startswith(EXCLUDE_KEYS) for o in args.overrides):
        return []
    try:
        parsed = _parse(args.overrides)
    except Exception:  # noqa: BLE001 - an unparsable line is reported by the override check
        return []
    fixed = sorted({o.key_or_group for o in parsed if not o.is_sweep_override()})
    return [f"{EXCLUDE_KEYS}=[" + ",".join(f"'{key}'" for key in fixed) + "]"]


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def swept_values() -> list[str]:
    """This multirun job's ``key=value`` overrides that are not excluded from its override dirname
    (the swept ones, when started through :func:`naming_overrides`), in command-line order."""
    from hydra.core.hydra_config import HydraConfig

    from ruyi.hydra_config import job_overrides

    task = job_overrides()
    exclude = set(HydraConfig.get().job.config.override_dirname.exclude_keys or ())
    return [line for line, o in zip(task, _parse(task)) if o.key_or_group not in exclude]


def _safe(item: str) -> str:
    """``key=value`` as a file-name part: a path value by its last component, anything but
    letters, digits and ``._=+-`` as ``-``."""
    key, _, value = item.partition("=")
    value = value.strip("'\"")
    if "/" in value.rstrip("/"):
        value = value.rstrip("/").rsplit("/", 1)[-1]
    return f"{_UNSAFE.sub('-', key.lstrip('+~')).strip('-')}={_UNSAFE.sub('-', value).strip('-')}"


def named_by(path: Path, swept: Sequence[str]) -> Path:
    """``outputs/ruyi.mp4`` + ``[sampler=euler, steps=5]`` -> ``outputs/ruyi_sampler=euler_steps=5.mp4``."""
    if not swept:
        return path
    tail = "_".join(_safe(item) for item in swept)
    name = f"{path.stem}_{tail}{path.suffix}"
    if len(name.encode()) > MAX_NAME:  # keep it unique: a hash of the whole tail
        digest = hashlib.sha1(tail.encode()).hexdigest()[:10]
        keep = MAX_NAME - len(path.suffix.encode()) - len(digest) - 2
        name = f"{name.encode()[:keep].decode(errors='ignore')}_{digest}{path.suffix}"
    return path.with_name(name)


def refuse_replacing(path: Path, *, overwrite: bool, more: int = 0) -> None:
    """A multirun never replaces an existing video (an earlier sweep's) unless ``overwrite=true``."""
    if overwrite or not path.is_file():
        return
    others = f" (and {more} more of this sweep's videos)" if more else ""
    raise OutputError(
        f"{path} already exists{others}: an earlier sweep made it, and a sweep never replaces videos; give this "
        f"sweep its own output (e.g. output={path.parent / 'sweep2' / 'ruyi.mp4'}) or pass overwrite=true"
    )


def check_sweep_outputs(argv: Sequence[str], cfg: Any) -> None:
    """Before any job starts: refuse a sweep whose jobs would replace existing videos (one line).
    ``cfg`` is the first job's composed config. An ``output`` that interpolates (``${seed}``) is
    left to each job's own check, as are sweeps Hydra's basic sweeper cannot list here."""
    from omegaconf import OmegaConf

    from ruyi.io import is_video_file
    from ruyi.overrides import _hydra_args

    args = _hydra_args(argv)
    if args is None or not args.multirun or OmegaConf.is_interpolation(cfg, "output") or cfg.get("overwrite") is True:
        return
    if not is_video_file(str(cfg.output)):
        return  # frames folders: must be new or empty anyway
    from hydra.utils import to_absolute_path

    try:
        parsed = _parse(args.overrides)
        swept = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed if o.is_sweep_override()]
    except Exception:  # noqa: BLE001 - glob/interval sweeps: each job checks its own file
        return
    base = Path(to_absolute_path(str(cfg.output)))
    existing = [p for p in (named_by(base, list(job)) for job in itertools.product(*swept)) if p.is_file()]
    if existing:
        refuse_replacing(existing[0], overwrite=False, more=len(existing) - 1)


def prepare(argv: Sequence[str], *, config_dir: str | Path, config_name: str, videos: bool = True) -> list[str]:
    """What an entry script does once before Hydra starts the jobs: refuse (one line, exit 2) a bad
    ``eval`` block and (``videos``: the script writes them) videos an earlier sweep made; return the
    overrides that name each job's output by its swept values."""
    import sys

    from ruyi.errors import EXIT_USAGE, RuyiUserError
    from ruyi.overrides import _hydra_args, compose_command_line

    args = _hydra_args(argv)
    if args is None or not (args.multirun or any(o.lstrip("+~").startswith("eval") for o in args.overrides)):
        return []
    try:
        cfg = compose_command_line(argv, config_dir=config_dir, config_name=config_name)
        if cfg is not None:
            from ruyi.eval.sweep import SweepEval

            SweepEval.from_config(cfg, config_name=config_name, config_dir=Path(config_dir))
            if videos:
                check_sweep_outputs(argv, cfg)
    except RuyiUserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    return naming_overrides(argv) if videos else []
