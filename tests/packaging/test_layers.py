"""Imports point one way: down the stage order of docs/design.md section 1, and never from the core into the
built-in plugins or tasks. Read from the source with ``ast``, so a function-level import and a ``TYPE_CHECKING``
import count too (an import-graph tool sees them as well).

Why: a stage that imports a later one makes both one unit again (the cycles of the flat layout), and a core
module that imported a built-in plugin would make the built-ins special. ``BACK_EDGES`` lists the imports that
still go up, each with the reason and what removes it; the list may only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

import covar_harness

CORE = Path(covar_harness.__file__).parent
CLIENTS = ("covar_harness_plugins", "covar_harness_tasks")
ORDER = [
    "common",
    "catalog",
    "models",
    "data",
    "pipeline",
    "masks",
    "attribution",
    "diagnosis",
    "results",
    "run",
    "concepts",
    "faithfulness",
    "leaderboard",
    "cli",
]
# (importing module, imported module) -> why it still goes up
BACK_EDGES = {}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def _imports(path: Path) -> list[str]:
    """Imported modules; ``from package import module`` counts as that module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [_submodule(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _submodule(module: str, name: str) -> str:
    parts = [*module.split("."), name]
    if parts[0] == "covar_harness" and (CORE.parent.joinpath(*parts).with_suffix(".py").is_file()):
        return ".".join(parts)
    return module


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _up_edges() -> set[tuple[str, str]]:
    edges = set()
    for name, path in _modules().items():
        here = _stage(name)
        for target in _imports(path):
            there = _stage(target) if target.startswith("covar_harness.") else None
            if here and there and ORDER.index(there) > ORDER.index(here):
                edges.add((name.split(".", 1)[1], target.split(".", 1)[1]))
    return edges


def test_the_core_imports_neither_plugins_nor_tasks():
    bad = [f"{n} imports {t}" for n, p in _modules().items() for t in _imports(p) if t.split(".")[0] in CLIENTS]
    assert not bad, bad


def test_imports_go_down_the_stage_order():
    assert _up_edges() <= set(BACK_EDGES), sorted(_up_edges() - set(BACK_EDGES))


def test_the_list_of_back_edges_only_shrinks():
    """An edge that is gone must leave the list, so the list stays the true remainder."""
    assert set(BACK_EDGES) <= _up_edges(), sorted(set(BACK_EDGES) - _up_edges())


def test_every_stage_package_is_in_the_order():
    assert {p.parent.name for p in CORE.glob("*/__init__.py")} == set(ORDER)


def _stage_edges() -> set[tuple[str, str]]:
    """(stage, stage) for every import between two stage packages, function-level and type-only included."""
    edges = set()
    for name, path in _modules().items():
        here = _stage(name)
        for target in _imports(path):
            there = _stage(target) if target.startswith("covar_harness.") else None
            if here and there and here != there:
                edges.add((here, there))
    return edges


def _stage_cycles(edges: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The edges that lie on a cycle: (a, b) where b reaches a."""

    def reaches(start: str, goal: str) -> bool:
        seen, todo = {start}, [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            for a, b in edges:
                if a == node and b not in seen:
                    seen.add(b)
                    todo.append(b)
        return False

    return sorted((a, b) for a, b in edges if reaches(b, a))


def test_no_cycle_between_stage_packages():
    """Every cycle between stages runs through a listed back-edge; with BACK_EDGES empty, there is none."""
    listed = {(a.split(".")[0], b.split(".")[0]) for a, b in BACK_EDGES}
    on_cycles = _stage_cycles(_stage_edges())
    assert not on_cycles or any(edge in listed for edge in on_cycles), on_cycles
    assert not _stage_cycles(_stage_edges() - listed), _stage_cycles(_stage_edges() - listed)


def test_the_stage_cycle_check_sees_a_cycle():
    assert _stage_cycles({("a", "b"), ("b", "a"), ("b", "c")}) == [("a", "b"), ("b", "a")]
