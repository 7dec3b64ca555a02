"""``python -m ruyi list``: every registered component, by kind (what the config groups can select)."""

from __future__ import annotations

import sys

from ruyi.registry import ALL_REGISTRIES


def describe() -> str:
    lines = []
    for kind, registry in ALL_REGISTRIES.items():
        lines.append(f"{kind}:")
        for name in registry.names():
            cls = registry.get(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            lines.append(f"  {name:<20} {cls.__module__}.{cls.__qualname__}" + (f" - {doc[0]}" if doc else ""))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] != ["list"]:
        print("usage: python -m ruyi list   (registered components by kind)", file=sys.stderr)
        return 2
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
