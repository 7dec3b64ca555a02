"""``python -m ruyi`` (also the ``ruyi`` command): ``list`` shows every registered component by
kind; ``eval`` judges a video (``python -m ruyi eval --help``); ``cache`` shows or clears the compile cache."""

from __future__ import annotations

import sys

USAGE = """usage: python -m ruyi {list,eval,cache} ...

  list                 every registered component by kind (what the config groups can select)
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


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if command == "list" and not rest:
        print(describe())
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
