"""The shape of the library: no import cycles in fdd/, imports one way between its subpackages.

Imports are read with :mod:`ast` from every module of ``fdd/``, including those inside
functions and under ``if TYPE_CHECKING:``, so an import moved into a function to dodge a
cycle is still seen.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import fdd

ROOT = Path(fdd.__file__).resolve().parent
# Layers from the bottom: a subpackage may import those before it, never those after it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("fdd.files", "fdd.config"),
    ("fdd.datasets", "fdd.models", "fdd.transport"),
    ("fdd.distillation",),
    ("fdd.fairness",),
    ("fdd.report",),
)
FORBIDDEN_THIRD_PARTY = ("prefect", "dvc", "yaml", "argparse", "flows", "tasks")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = ["fdd", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imported_names(module: str, path: Path) -> list[str]:
    """Every dotted name an import statement in ``path`` may load, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


@functools.cache  # read once per session; callers do not modify it
def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for name in _imported_names(module, path):
            target = resolve(name)
            # a module's own package is initialised before it: that edge is not an import of it
            if target and target != module and not module.startswith(target + "."):
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                found.append(stack[stack.index(w) :] + [w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_function_level_imports_are_read(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from . import sibling\n\ndef f():\n    from .other import thing\n")
    assert _imported_names("fdd.pkg.mod", source) == [
        "fdd.pkg",
        "fdd.pkg.sibling",
        "fdd.pkg.other",
        "fdd.pkg.other.thing",
    ]


def test_no_import_cycle_between_fdd_modules() -> None:
    graph = _graph()
    assert "fdd.distillation.synthesis" in graph and graph["fdd.distillation.run"]  # the graph was read
    cycles = _cycles(graph)
    assert not cycles, "import cycles in fdd/: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_import_cycle_between_fdd_subpackages() -> None:
    """Importing a module runs its package's ``__init__`` first: package-level cycles are real cycles too."""
    packages: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        packages.setdefault(_package(module), set()).update(
            _package(t) for t in targets if _package(t) != _package(module) and t != "fdd"
        )
    cycles = _cycles(packages)
    assert not cycles, "import cycles between fdd's subpackages: " + "; ".join(" -> ".join(c) for c in cycles)


def test_subpackages_import_only_lower_layers() -> None:
    rank = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    assert set(rank) >= {_package(m) for m in _graph() if m != "fdd"}, "a new subpackage needs a layer in LAYERS"
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in _graph().items()
        if module != "fdd"
        for target in targets
        if target != "fdd" and rank[_package(target)] > rank[_package(module)]
    )
    assert not upward, "imports must run downwards (see docs/architecture.md): " + "; ".join(upward)


@pytest.mark.parametrize("name", FORBIDDEN_THIRD_PARTY)
def test_library_never_imports_orchestration(name: str) -> None:
    offenders = sorted(
        module
        for module, path in _modules().items()
        if any(n == name or n.startswith(name + ".") for n in _imported_names(module, path))
    )
    assert not offenders, f"fdd/ must not import {name}: {offenders}"
