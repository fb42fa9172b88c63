"""The package's layers, read from the imports themselves: no import cycle, and no module imports
from a layer above its own (ARCHITECTURE.md draws the same table)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "imgfeat"

BASE = {"_version", "errors", "files"}
# What each top-level part of the package may import, besides itself.
ALLOWED = {
    "_version": set(),
    "errors": set(),
    "files": set(),
    "models": BASE,
    "data": BASE | {"models"},  # the geometry half of models.preprocess runs in the decode workers
    "outputs": BASE,
    "options": BASE | {"data", "models", "outputs"},
    "engines": BASE | {"data", "models", "outputs", "options"},
    "tools": BASE | {"outputs"},  # tools read features, never the extraction pipeline
    "api": BASE | {"data", "models", "outputs", "options", "engines"},
    "bench": BASE | {"data", "models", "options", "api"},
    "serve": BASE | {"data", "models", "outputs", "options", "engines", "api", "tools"},
    "cli": BASE | {"data", "models", "outputs", "options", "engines", "api", "tools", "bench", "serve"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every imgfeat module ``path`` imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    modules = {_module_name(p) for p in SRC.rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("imgfeat"):
                names = {f"{target}.{a.name}" for a in node.names}
                found.update(names & modules)
                if names - modules:  # names defined in ``target`` itself, not submodules of it
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("imgfeat"))
        elif (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets)
              and isinstance(node.value, ast.Dict)):  # a package's names imported on first use (PEP 562)
            for value in node.value.values:
                rel = value.value
                dots = len(rel) - len(rel.lstrip("."))
                base = package.split(".")
                base = base[: len(base) - max(dots, 1) + 1]
                found.add(".".join(base + [rel.lstrip(".")]))
    return {m for m in found if m in modules and m != name}


GRAPH = {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _part(m) not in ("__init__", "__main__")))
def test_no_import_from_a_higher_layer(module):
    part = _part(module)
    assert part in ALLOWED, f"{module}: add its part to ALLOWED and to ARCHITECTURE.md"
    bad = sorted(m for m in GRAPH[module] if _part(m) not in ALLOWED[part] | {part, "__init__"})
    assert not bad, f"{module} ({part}) imports from a higher layer: {bad}"
    assert "imgfeat" not in GRAPH[module], f"{module} imports the package root (an upward arrow)"


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if n in GRAPH:
                if state.get(n) == 1:
                    pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
                if n not in state:
                    visit(n)
        stack.pop()
        state[m] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checker_sees_imports():
    """The graph is not empty by accident: known arrows are found."""
    assert "imgfeat.outputs.formats" in GRAPH["imgfeat.tools"]
    assert "imgfeat.data.shards" in GRAPH["imgfeat.engines.ray"]
    assert "imgfeat.errors" in GRAPH["imgfeat.models.weights"]
