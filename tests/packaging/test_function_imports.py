"""Imports sit at the top of a module, where a reader and an import-graph tool see them; an import inside a
function is the exception, rare and explained. Read from the source with ``ast``.

Why: 480 function-level imports (23 per 1,000 lines) once hid the cycles of the flat layout and the cost of
each import. What stays inside functions keeps ``--help``, ``ls`` and plugin discovery free of torch and of the
optional backends (open_clip, transformers, datasets, matplotlib, ...), or breaks one cycle that is named; each
says which on its line or the line above (``# lazy: ...`` / ``# cycle: ...``). And no two modules import each
other at import time: such a cycle works or fails depending on which module is imported first.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "harness", ROOT / "plugins", ROOT / "tasks"]
MAX_PER_1000_LINES = 5


def _files() -> list[Path]:
    return sorted(p for src in SOURCES for p in src.rglob("*.py"))


def _function_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: dict[int, ast.Import | ast.ImportFrom] = {}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found[node.lineno] = node
    return list(found.values())


def _has_reason(lines: list[str], node: ast.Import | ast.ImportFrom) -> bool:
    """A comment on the import's (last) line, or a comment line right above it."""
    last, above = lines[(node.end_lineno or node.lineno) - 1], lines[node.lineno - 2].strip()
    return "#" in last.split("import", 1)[-1] or (above.startswith("#") and len(above) > 2)


def _survey() -> tuple[int, list[str], list[str]]:
    n_lines, imports, unexplained = 0, [], []
    for path in _files():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        n_lines += len(lines)
        for node in _function_imports(ast.parse(text)):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            imports.append(where)
            if not _has_reason(lines, node):
                unexplained.append(f"{where}: {ast.unparse(node)}")
    return n_lines, imports, unexplained


def test_function_level_imports_are_rare():
    n_lines, imports, _ = _survey()
    rate = 1000 * len(imports) / n_lines
    assert rate < MAX_PER_1000_LINES, f"{len(imports)} function-level imports in {n_lines} lines = {rate:.2f}/1000"


def test_every_function_level_import_says_why():
    assert not _survey()[2], "\n".join(_survey()[2])


# ---- no module imports another that imports it back at import time ---------------------------------------
def _module_name(path: Path) -> str:
    src = next(s for s in SOURCES if s in path.parents)
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """What runs when the module is imported: module body, ``if`` / ``try`` blocks, not ``if TYPE_CHECKING``."""
    out: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            out += _top_level_imports(node.body) + _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            out += _top_level_imports(node.body) + _top_level_imports(node.orelse)
            for handler in node.handlers:
                out += _top_level_imports(handler.body)
    return out


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in _files()}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module for a in node.names
                }
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_level_import_cycle():
    cycle = _cycle(_import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
