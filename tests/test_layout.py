"""The package layout is the architecture: each folder imports only from the layers below it, and no two
modules import each other (directly or around a circle) when they load."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "melvoc"

# Each folder and what it may import (besides itself and the root package's __version__). Listed bottom-up.
LAYERS: dict[str, set[str]] = {
    "features": set(),
    "data": {"features"},
    "metrics": set(),
    "models": {"features"},
    "peers": {"features", "models"},
    "deploy": {"features", "data", "models", "peers"},
    "training": {"features", "data", "metrics", "models", "peers", "deploy"},
    "evaluation": {"features", "data", "metrics", "deploy"},
    "matching": {"features"},
}
# The top-level modules: the commands and the documented import paths, each over its folder.
ENTRY_POINTS = {"compat", "compare", "identify", "evaluate", "synthesize", "export"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path], *, top_level_only: bool) -> set[str]:
    """The melvoc modules ``path`` imports (``from pkg import submodule`` counts as the submodule)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("melvoc"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("melvoc"))
    return found


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "melvoc"


def test_every_module_belongs_to_a_layer_or_is_an_entry_point():
    top = {folder(m) for m in modules()} - {"melvoc"}
    assert top == set(LAYERS) | ENTRY_POINTS, "a new folder or top-level module needs its place in LAYERS"
    for name in ENTRY_POINTS:
        assert (PACKAGE / f"{name}.py").is_file()


def test_no_import_from_a_lower_layer_back_up():
    known = modules()
    wrong = []
    for module, path in known.items():
        source = folder(module)
        if source == "melvoc" or source in ENTRY_POINTS:
            continue
        for target in imports(path, known, top_level_only=False):
            if target == "melvoc":
                continue  # the root package: __version__ and the public facade
            destination = folder(target)
            if destination != source and destination not in LAYERS[source]:
                wrong.append(f"{module} imports {target} ({source} may import {sorted(LAYERS[source]) or 'nothing'})")
    assert not wrong, "\n".join(wrong)


def test_no_library_module_imports_an_entry_point():
    known = modules()
    wrong = [f"{module} imports {target}" for module, path in known.items() if folder(module) in LAYERS
             for target in imports(path, known, top_level_only=False) if folder(target) in ENTRY_POINTS]
    assert not wrong, "\n".join(wrong)


def test_no_circle_of_imports():
    """No cycle among the imports a module runs when it loads (function-level imports run later)."""
    known = modules()
    graph = {m: {t for t in imports(p, known, top_level_only=True) if t in known} for m, p in known.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not circles, "\n".join(circles)


def test_every_folder_is_a_package():
    """A folder without ``__init__.py`` imports in a checkout but is left out of a built wheel."""
    folders = {path.parent for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    assert [str(f) for f in sorted(folders) if not (f / "__init__.py").is_file()] == []
