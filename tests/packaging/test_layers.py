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
BACK_EDGES = {
    ("catalog.plugin_manager", "data.taskconfig"): "the Catalog holds the TaskIndex; the index moves into catalog",
    ("masks.segmenter", "results.files"): "MaskCache writes atomically; atomic writes move to common",
    ("pipeline.contract", "run.evaluator"): "type only: PairContext.options is a RunOptions",
    ("pipeline.contract", "run.progress"): "type only: PairContext.reporter is a Reporter",
    ("attribution.overlays", "results.files"): "atomic writes move to common",
    ("results.validation", "faithfulness.leaderboard"): "the faithfulness schema moves into results",
    ("results.submission", "faithfulness.leaderboard"): "the faithfulness schema moves into results",
    ("faithfulness.leaderboard", "leaderboard.tables"): "faithfulness tables move into leaderboard",
}


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
