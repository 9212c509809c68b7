"""The core never imports the built-in plugins or tasks, not even inside a function.

Why: plugins and tasks are clients of the core (they register through hooks); a core module that imported one
would make the built-ins special and bring back the cycle the layout removed. Read from the source with ``ast``,
so a function-level import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import covar_harness

CORE = Path(covar_harness.__file__).parent
CLIENTS = ("covar_harness_plugins", "covar_harness_tasks")


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_the_core_imports_neither_plugins_nor_tasks():
    bad = [
        f"{p.relative_to(CORE)} imports {name}"
        for p in sorted(CORE.rglob("*.py"))
        for name in _imports(p)
        if name.split(".")[0] in CLIENTS
    ]
    assert not bad, bad
