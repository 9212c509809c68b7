"""A private name (``_x``) stays in the module that defines it: no ``from covar_harness... import _x`` and no
``module._x`` on an imported first-party module, in the core, the built-in plugins or the tasks.

Why: issue 22 item 4. A private name imported elsewhere is an undeclared contract: renaming it inside its module
breaks a module that nobody thinks to look at, and a reader cannot tell which helpers are shared.
"""

from __future__ import annotations

import ast
from pathlib import Path

import covar_harness
import covar_harness_plugins
import covar_harness_tasks

PACKAGES = (covar_harness, covar_harness_plugins, covar_harness_tasks)
FIRST_PARTY = tuple(p.__name__ for p in PACKAGES)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def crossings(source: str) -> list[str]:
    """Each private first-party name the module imports or reads off an imported first-party module."""

    tree = ast.parse(source)
    found: list[str] = []
    modules: set[str] = set()  # local names bound to first-party modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(FIRST_PARTY):
            found += [f"from {node.module} import {a.name}" for a in node.names if _private(a.name)]
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.startswith(FIRST_PARTY) and a.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
            if node.value.id in modules and node.value.id[:1].islower():
                found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module() -> None:
    bad = []
    for package in PACKAGES:
        for path in sorted(Path(package.__file__).parent.rglob("*.py")):
            bad += [f"{path.name}: {c}" for c in crossings(path.read_text(encoding="utf-8"))]
    assert not bad, "private names used outside their module:\n" + "\n".join(bad)


def test_the_check_finds_both_forms() -> None:
    planted = (
        "from covar_harness.run import pair\n"
        "from covar_harness.run.pair import _rows, image_pass\n"
        "x = pair._secret(1)\n"
        "y = self._own\n"
    )
    assert crossings(planted) == ["from covar_harness.run.pair import _rows", "pair._secret"]
