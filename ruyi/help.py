"""``--help`` of the entry points: only the groups and keys that entry point's config uses, each
explained by the comment beside it in the YAML (the configs are the one place they are documented).

Hydra's own help lists every folder under ``configs/`` (training groups in ``infer.py --help``,
metrics that are not a group) and none of the comments.
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_LINE = re.compile(r"^\s+-\s+(override\s+)?([\w/]+):\s*([\w.\-]+|null|\[\])\s*(?:#\s*(.*))?$")
INCLUDE_LINE = re.compile(r"^\s+-\s+(\w+)\s*(?:#.*)?$")  # another config of configs/ (pipeline), not _self_
KEY_LINE = re.compile(r"^([A-Za-z_]\w*):\s*(.*?)\s*(?:#\s*(.*))?$")


def _defaults(text: str):
    """The lines of the config's defaults list."""
    in_defaults = False
    for line in text.splitlines():
        if line.startswith("defaults:"):
            in_defaults = True
            continue
        if in_defaults and line and not line.startswith((" ", "#")):
            return
        if in_defaults:
            yield line


def _included(text: str, configs: Path) -> list[str]:
    """The texts of the configs this one includes in its defaults list (``- pipeline``), in order."""
    found = []
    for line in _defaults(text):
        include = INCLUDE_LINE.match(line)
        if include and include.group(1) != "_self_" and (configs / f"{include.group(1)}.yaml").is_file():
            found.append((configs / f"{include.group(1)}.yaml").read_text())
    return found


def _groups(text: str, configs: Path) -> list[tuple[str, str, list[str], str]]:
    """(group, default, options, comment) of the defaults list, those of an included config
    (``- pipeline``) first; ``override group: option`` changes the default, keeps the row."""
    rows: dict[str, tuple[str, str, list[str], str]] = {}
    for included in _included(text, configs):
        rows.update((row[0], row) for row in _groups(included, configs))
    for line in _defaults(text):
        match = DEFAULT_LINE.match(line)
        if match:
            override, group, default, comment = match.groups()
            options = sorted(p.stem for p in (configs / group).glob("*.yaml"))
            if override and group in rows:
                comment = comment or rows[group][3]
            rows[group] = (group, default, options, comment or "")
    return list(rows.values())


def _keys(text: str) -> list[tuple[str, str, str]]:
    """(key, default, comment) of the top-level keys (not the defaults list or hydra's block)."""
    rows = []
    for line in text.splitlines():
        match = KEY_LINE.match(line)
        if match and match.group(1) not in ("defaults", "hydra"):
            key, value, comment = match.groups()
            if "model." in value:  # an interpolation of the preset's value
                value = "(the preset's)"
            rows.append((key, value or "(a block)", comment or ""))
    return rows


def control_labels(argv: list[str], config_dir: Path, config_name: str) -> dict[str, str]:
    """{"camera": ..., "motion": ...}: the labels of the model this command line selects, read from
    its checkpoint's table (a model taught new moves has more than the YAML comment can list); {}
    where the command line does not compose or the config has no camera."""
    from ruyi.errors import RuyiUserError

    try:
        from ruyi.assembly import PipelineSpec
        from ruyi.overrides import compose_command_line

        cfg = compose_command_line([a for a in argv if a not in ("-h", "--help")], config_dir=config_dir,
                                   config_name=config_name)  # fmt: skip
        if cfg is None or "camera" not in cfg:
            return {}
        spec = PipelineSpec.from_config(cfg)
        control = spec.control.create()
        control.read_labels(spec.model.path)
    except RuyiUserError:  # the run itself will say what is wrong
        return {}
    where = f"(the rows of {Path(spec.model.path).name if spec.model.path else spec.model.name})"
    return {"camera": f"{' | '.join(control.cameras)} {where}", "motion": f"{' | '.join(control.motions)} {where}"}


def entry_help(config_dir: Path, config_name: str, script: str, argv: list[str] | None = None) -> str:
    """The help text; with ``argv`` (the command line), the camera and motion labels of the model it selects."""
    text = (config_dir / f"{config_name}.yaml").read_text()
    head = []
    for line in text.splitlines():  # the file's leading comment block
        if not line.startswith("#"):
            break
        head.append(line[2:])
    lines = [f"usage: python {script} [key=value ...] [group=option ...]", *(f"  {h}" for h in head), "",
             "groups (group=option; * marks the default):"]  # fmt: skip
    for group, default, options, comment in _groups(text, config_dir):
        shown = ", ".join(f"*{o}" if o == default else o for o in options) or "-"
        lines.append(f"  {group:<22} {shown}" + (f"\n  {'':<22} {comment}" if comment else ""))
    lines += ["", "keys (key=value):"]
    keys = {row[0]: row for part in [*_included(text, config_dir), text] for row in _keys(part)}
    labels = control_labels(argv, config_dir, config_name) if argv is not None and "camera" in keys else {}
    for key, value, comment in keys.values():
        comment = labels.get(key, comment)
        lines.append(f"  {key:<22} {value:<24} {comment}".rstrip())
    lines += ["", "Hydra: -m runs a sweep over comma-separated values (seed=1,2,3); --cfg job prints the",
              "composed config; --hydra-help shows Hydra's own options."]  # fmt: skip
    return "\n".join(lines)


def print_help_if_asked(argv: list[str], *, config_dir: Path, config_name: str, script: str) -> None:
    """``-h``/``--help`` prints this entry point's help and exits 0 (before Hydra)."""
    if any(a in ("-h", "--help") for a in argv):
        print(entry_help(config_dir, config_name, script, argv=list(argv)))
        raise SystemExit(0)
