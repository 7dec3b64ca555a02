"""Command-line overrides checked before Hydra runs: one line and exit code 2 for a user's typo.

Left to Hydra, ``sampler=foo`` or ``frame=16`` end with Hydra's multi-line text and exit code 1,
and ``+frame=16`` is silently added and ignored. ``scripts/infer.py`` and ``benchmarks/sweep.py``
call :func:`exit_on_bad_overrides` first: it composes the config with the same overrides through
Hydra's compose API (a multirun sweep once per swept value, so the third value of a sweep cannot
fail after two finished jobs) and turns a failure into one line that lists the valid choices —
the config group's options, which are the registry's names (a YAML's stem is its registered name).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ruyi.errors import EXIT_USAGE, ConfigError

_ABSENT = object()
# Keys that moved: an override of the old key (or of one below it) fails with one line naming the new one.
RENAMED: dict[str, str] = {
    "teacache": "a plugin chosen in a list: plugin=[teacache] (options: plugin.teacache.threshold=0.15)",
    "enhance_a_video": "a plugin chosen in a list: plugin=[enhance_a_video] (options: plugin.enhance_a_video.weight=2)",
    "parallel.attention_backend": "attention=<name> (e.g. attention=sdpa): one kernel choice for every attention, "
    "the sequence-parallel self-attention included",
}
_PLAIN_VALUE = re.compile(r"[\w./:@%~+\- ]*")  # anything else is quoted back (commas would start a sweep)


def exit_on_bad_overrides(argv: Sequence[str], *, config_dir: str | Path, config_name: str) -> None:
    """Print ``error: ...`` and exit 2 if ``argv`` cannot compose into a valid config."""
    message = check_overrides(argv, config_dir=config_dir, config_name=config_name)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def check_overrides(argv: Sequence[str], *, config_dir: str | Path, config_name: str) -> str | None:
    """The one-line error for the command line ``argv`` (``None``: fine, or left to Hydra)."""
    try:
        compose_command_line(argv, config_dir=config_dir, config_name=config_name)
    except ConfigError as err:
        return str(err)
    return None


def compose_command_line(argv: Sequence[str], *, config_dir: str | Path, config_name: str) -> Any:
    """The config ``argv`` composes to (a sweep's first job), ``None`` where Hydra alone should
    handle ``argv`` (``--help``, ``--cfg``, another config...), or a :class:`ConfigError` whose
    one-line message names the bad override and the valid choices."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    args = _hydra_args(argv)
    if args is None:
        return None
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as err:
        raise ConfigError(f"cannot parse the command line ({_first_line(err)}); overrides are key=value") from None
    _check_renamed(parsed)
    variants = _variants(parsed, args.overrides, multirun=args.multirun)
    if variants is None:
        return None
    composed = [_compose_checked(config_dir, config_name, overrides) for overrides in variants]
    _check_added_keys(config_dir, config_name, parsed, variants[0], composed[0])
    return composed[0]


def _check_renamed(parsed: list) -> None:
    for override in parsed:
        key = override.key_or_group
        for old, new in RENAMED.items():
            if key == old or key.startswith(old + "."):
                raise ConfigError(f"{key} is now {new}")


def _hydra_args(argv: Sequence[str]) -> Any:
    """Hydra's own parse of the command line, or None when Hydra should handle it alone (help,
    --cfg, another config...)."""
    try:
        from hydra._internal.utils import get_args_parser
    except ImportError:  # pragma: no cover - a Hydra without this helper: let Hydra report
        return None
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # Hydra prints its own usage error next
            args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return None
    handled_by_hydra = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion, args.config_path,
                        args.config_name, args.config_dir, args.experimental_rerun)  # fmt: skip
    return None if any(handled_by_hydra) else args


def _variants(parsed: list, raw: list[str], *, multirun: bool) -> list[list[str]] | None:
    """The override lists to compose: the command line itself, or for a multirun sweep its first
    job plus one list per further swept value (each value composed once, not every combination)."""
    sweeps = [i for i, o in enumerate(parsed) if o.is_sweep_override()]
    if not multirun or not sweeps:
        return [list(raw)]
    try:
        values = {i: list(parsed[i].sweep_string_iterator()) for i in sweeps}
    except Exception:  # noqa: BLE001 - glob/interval sweeps need the sweeper: let Hydra handle them
        return None
    first = [f"{o.get_key_element()}={_quote(values[i][0])}" if i in values else raw[i] for i, o in enumerate(parsed)]
    variants = [first]
    for i in sweeps:
        for value in values[i][1:]:
            variant = list(first)
            variant[i] = f"{parsed[i].get_key_element()}={_quote(value)}"
            variants.append(variant)
    return variants


def _quote(value: str) -> str:
    if _PLAIN_VALUE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _compose(config_dir: str | Path, config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)


def _compose_checked(config_dir: str | Path, config_name: str, overrides: list[str]) -> Any:
    from hydra.errors import HydraException, MissingConfigException

    try:
        return _compose(config_dir, config_name, overrides)
    except MissingConfigException as err:
        message = _missing_option(err, config_dir, config_name)
    except HydraException as err:
        message = _composition_error(err, overrides, config_dir, config_name)
    raise ConfigError(message)


def _composition_error(err: Exception, overrides: list[str], config_dir: str | Path, config_name: str) -> str:
    text = str(err)
    match = re.search(r"Could not override '([^']+)'", text)
    if match:
        return _unknown_key(match.group(1), overrides, config_dir, config_name)
    if "Ambiguous value" in text:
        override = _first_line(err).removeprefix("Ambiguous value for argument ").strip("'")
        return f"{override} has several values: add -m to sweep over them, or write a list as [a,b]"
    match = re.search(r"Multiple values for (\S+?)\.", text)
    if match:
        return f"{match.group(1)} is already a config group: select it without '+' ({match.group(1)}=...)"
    return f"cannot compose the config: {_first_line(err)}"


def _missing_option(err: Any, config_dir: str | Path, config_name: str) -> str:
    """``sampler=foo``: name the group and list its options (= the registry's names)."""
    missing = getattr(err, "missing_cfg_file", None) or ""
    if not missing:  # an option of a list (plugin=[a,b]): Hydra names the file only in its text
        found = re.search(r"Could not load '([\w/]+)'", str(err))
        missing = found.group(1) if found else ""
    options = list(getattr(err, "options", None) or [])
    if "/" in missing and not options:
        options = sorted(p.stem for p in (Path(config_dir) / missing.rpartition("/")[0]).glob("*.yaml"))
    if "/" not in missing or not options:
        return f"cannot compose the config: {_first_line(err)}"
    group, _, name = missing.rpartition("/")
    choices = _choices(config_dir, config_name)
    optional = choices.get(group, "") is None
    valid = ", ".join(options) + (" (or null: off)" if optional else "")
    return f"{group}={name} is not a known {group}; valid names: {valid}"


def _choices(config_dir: str | Path, config_name: str) -> dict[str, Any]:
    try:
        return dict(_compose(config_dir, config_name, []).hydra.runtime.choices)
    except Exception:  # noqa: BLE001 - only used to word a message
        return {}


def _unknown_key(key: str, overrides: list[str], config_dir: str | Path, config_name: str) -> str:
    """``frame=16``: the key is not in the config; list the keys that are (of its parent node)."""
    others = [o for o in overrides if not o.lstrip("+~").startswith(key + "=") and not o.startswith(key + "@")]
    group, _, option = key.partition(".")
    chosen = option.partition(".")[0]
    if group == "plugin" and chosen and (Path(config_dir) / group / f"{chosen}.yaml").is_file():
        return f"{key} belongs to a plugin that is not chosen; add it to the list: plugin=[{chosen}] {key}=..."
    keys = _keys_beside(key, others, config_dir, config_name)
    return f"{key} is not a config key{_suggest(key, keys)}; {_key_list(key, keys)}"


def _check_added_keys(config_dir: str | Path, config_name: str, parsed: list, overrides: list[str], cfg: Any) -> None:
    """``+frame=16`` adds a key nothing reads: refuse it unless it selects a config group."""
    from omegaconf import OmegaConf

    groups = set(cfg.hydra.runtime.choices)
    added = [
        i for i, o in enumerate(parsed)
        if (o.is_add() or o.is_force_add()) and not o.key_or_group.startswith("hydra") and o.key_or_group not in groups
    ]  # fmt: skip
    if not added:
        return
    try:
        before = _compose(config_dir, config_name, [o for i, o in enumerate(overrides) if i not in added])
    except Exception:  # noqa: BLE001 - composition errors were reported already
        return
    for i in added:
        key = parsed[i].key_or_group
        if OmegaConf.select(before, key, default=_ABSENT) is _ABSENT:
            keys = _node_keys(before, key)
            raise ConfigError(f"{overrides[i]} adds a key no component reads{_suggest(key, keys)}; {_key_list(key, keys)}")


def _keys_beside(key: str, overrides: list[str], config_dir: str | Path, config_name: str) -> list[str]:
    for attempt in (overrides, []):
        try:
            return _node_keys(_compose(config_dir, config_name, attempt), key)
        except Exception:  # noqa: BLE001 - fall back to the plain config
            continue
    return []


def _node_keys(cfg: Any, key: str) -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if not isinstance(node, DictConfig):
        return []
    return sorted(k for k in node.keys() if k != "hydra" and not str(k).startswith("_"))


def _suggest(key: str, keys: list[str]) -> str:
    leaf = key.rpartition(".")[2]
    close = difflib.get_close_matches(leaf, keys, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _key_list(key: str, keys: list[str]) -> str:
    parent = key.rpartition(".")[0]
    where = f"{parent} has" if parent else "the keys are"
    return f"{where}: {', '.join(keys)}" if keys else "see configs/infer.yaml"


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
