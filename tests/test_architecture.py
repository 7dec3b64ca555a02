"""Imports point down (entry points -> assembly -> pipeline -> conditioning/placement/precision/memory -> models/samplers/plugins
-> registry/io/errors) and form no cycle: checked from the source's import statements, lazy ones included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ruyi"

# lower number = lower layer; a module may import its own layer or lower ones only
LAYERS = {
    "ruyi.errors": 0, "ruyi.checks": 0, "ruyi.extension": 0, "ruyi.hooks": 0, "ruyi.compile_cache": 0, "ruyi.registry": 0, "ruyi.files": 0, "ruyi.io": 0,
    "ruyi.models": 1, "ruyi.samplers": 1, "ruyi.plugins": 1, "ruyi.attention": 1,
    "ruyi.conditioning": 2, "ruyi.placement": 2, "ruyi.precision": 2, "ruyi.memory": 2, "ruyi.parallel": 2, "ruyi.compile": 2,
    "ruyi.pipeline": 3,
    "ruyi.checkpoints": 4, "ruyi.components": 4, "ruyi.hydra_config": 4, "ruyi.assembly": 4,
    "ruyi.cli": 5, "ruyi.overrides": 5, "ruyi.help": 5, "ruyi.multirun": 5, "ruyi.eval": 5, "ruyi.training": 5,
    "ruyi": 6,  # the package's lazy public entry (ruyi.load_pipeline)
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The ruyi modules ``path`` imports anywhere in its body (resolved to the longest known module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("ruyi"):
                found.add(name)
    return found


def layer(module: str) -> int:
    while module not in LAYERS:
        module = module.rpartition(".")[0]
        assert module, "every ruyi module must belong to a layer in LAYERS"
    return LAYERS[module]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, known) - {name} for name, path in mods.items()}


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in graph().items()
        for b in targets
        if layer(b) > layer(a) and not b.startswith(a + ".")  # a package may import its own submodules
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles_between_packages():
    def package(module: str) -> str:  # cycles are judged between top-level parts (ruyi.models, ruyi.pipeline, ...)
        parts = module.split(".")
        return ".".join(parts[:2])

    edges: dict[str, set[str]] = {}
    for a, targets in graph().items():
        for b in targets:
            if package(a) != package(b) and package(a) != "ruyi":
                edges.setdefault(package(a), set()).add(package(b))
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycle.extend([*trail, node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*trail, node]):
                return True
        state[node] = 2
        return False

    for node in list(edges):
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_the_checker_sees_a_planted_upward_import(tmp_path, monkeypatch):
    """The check can fail: a models module importing the pipeline is reported."""
    planted = tmp_path / "ruyi" / "models"
    planted.mkdir(parents=True)
    (tmp_path / "ruyi" / "__init__.py").write_text("")
    (tmp_path / "ruyi" / "pipeline.py").write_text("")
    (planted / "__init__.py").write_text("")
    (planted / "bad.py").write_text("def f():\n    from ruyi.pipeline import RuyiPipeline\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "ruyi", raising=False)
    globals()["PACKAGE"] = tmp_path / "ruyi"
    try:
        g = graph()
    finally:
        globals()["PACKAGE"] = Path(__file__).resolve().parents[1] / "ruyi"
    assert "ruyi.pipeline" in g["ruyi.models.bad"] and layer("ruyi.pipeline") > layer("ruyi.models.bad")
