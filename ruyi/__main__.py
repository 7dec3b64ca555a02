"""``python -m ruyi`` (also the ``ruyi`` command): ``list`` shows every registered component by
kind and the camera labels of each model; ``eval`` judges a video (``python -m ruyi eval --help``);
``cache`` shows or clears the compile cache."""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """usage: python -m ruyi {list,eval,cache} ...

  list [CHECKPOINT...] every registered component by kind (what the config groups can select), and
                       the camera/motion labels of each model preset (and CHECKPOINT folder) here
  eval VIDEO [...]     judge a video: fidelity to a reference, camera, motion, keyframes, flicker
                       (python -m ruyi eval --help)
  cache [clear]        where compiled kernels are kept (compile=regional|auto) and their size; clear removes them
"""


def describe() -> str:
    from ruyi.registry import ALL_REGISTRIES

    lines = []
    for kind, registry in ALL_REGISTRIES.items():
        lines.append(f"{kind}:")
        for name in registry.names():
            cls = registry.get(name)
            doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
            lines.append(f"  {name:<20} {cls.__module__}.{cls.__qualname__}" + (f" - {doc}" if doc else ""))
    return "\n".join(lines)


def control_labels(checkpoints: list[str]) -> str:
    """The camera and motion labels of each model preset whose checkpoint is on this machine and of
    each ``checkpoints`` folder: the rows of its control table."""
    from ruyi.conditioning.control import CAMERAS, CameraMotionControl
    from ruyi.hydra_config import load_preset, preset_names

    lines = ["camera labels (infer.py camera=..., motion=...; the rows of each model's embeddings.safetensors):"]
    models = [(name, load_preset(name).get("path")) for name in preset_names()] + [(c, c) for c in checkpoints]
    for name, path in models:
        control = CameraMotionControl()
        if path and (Path(path) / control.file).is_file():
            control.read_labels(path)
            lines.append(f"  {name:<20} {', '.join(control.cameras)}; motion {', '.join(control.motions)}")
        else:
            lines.append(f"  {name:<20} (not on this machine; Ruyi-Mini-7B's table has {', '.join(CAMERAS)})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if command == "list" and not any(a.startswith("-") for a in rest):
        from ruyi.errors import RuyiUserError

        missing = [c for c in rest if not Path(c).is_dir()]
        if missing:
            print(f"error: {missing[0]} is not a checkpoint folder; give the folder model.path= would name", file=sys.stderr)
            return 2
        print(describe() + "\n")
        try:
            print(control_labels(rest))
        except RuyiUserError as err:  # a damaged table: one line
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if command == "cache":
        from ruyi.compile_cache import cache_command

        return cache_command(rest)
    if command == "eval":
        from ruyi.eval.cli import main as eval_main

        return eval_main(rest)
    print(USAGE, end="", file=sys.stderr)
    return 2


def cli() -> None:
    """The ``ruyi`` console script."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    cli()
