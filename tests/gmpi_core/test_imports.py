"""gmpi_core's import graph goes straight down: no module imports itself back through others, and no layer
imports a layer above it (the layer list of docs/architecture.md). Every import counts: top-level,
inside a function, or under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
from pathlib import Path

import gmpi_core

ROOT = Path(gmpi_core.__file__).parent

# Lowest first. A module of gmpi_core belongs to the layer named by its first component under gmpi_core
# (``gmpi_core.render.views`` → ``render``, ``gmpi_core.pipeline`` → ``pipeline``); it may import its own
# layer and the layers before it. Modules of one layer may import each other (without cycles).
LAYERS: list[tuple[str, ...]] = [
    ("progress", "atomic", "config"),  # plain helpers and the configuration: no other gmpi_core import
    ("camera",),
    ("ops",),
    ("mpi",),
    ("networks",),
    ("checkpoints",),
    ("pipeline",),
    ("data",),
    ("preprocess",),
    ("render",),
    ("eval",),
    ("train",),
    ("doctor",),
    ("cli",),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The gmpi_core modules ``name`` imports (``from pkg import mod`` counts as importing ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name and m != "gmpi_core"}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "gmpi_core"


def test_every_module_has_a_layer():
    unplaced = sorted({_layer(m) for m in _graph()} - set(RANK) - {"gmpi_core"})
    assert not unplaced, f"add these to LAYERS (and to docs/architecture.md): {unplaced}"


def test_no_layer_imports_a_layer_above_it():
    upward = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in sorted(_graph().items())
        if _layer(module) in RANK
        for target in sorted(targets)
        if _layer(target) in RANK and RANK[_layer(target)] > RANK[_layer(module)]
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, path)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_architecture_doc_lists_the_layers_in_this_order():
    """docs/architecture.md lists gmpi_core's parts top-down, in the order of LAYERS."""
    text = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = text[text.index("gmpi_core  the library") :].split("```")[0]
    entries = [line.split()[0] for line in listed.splitlines() if line[:2] == "  " and line[2:3] != " "]
    order = [entry.rstrip("/").removesuffix(".py") for entry in entries]
    assert set(RANK) <= set(order), f"not in docs/architecture.md: {sorted(set(RANK) - set(order))}"
    ranks = [RANK[name] for name in order if name in RANK]
    assert ranks == sorted(ranks, reverse=True), f"docs/architecture.md lists the layers as {order}"
