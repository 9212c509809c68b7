"""CONTRIBUTING's map and docs/design.md's list of stage packages name exactly the packages in the tree.

Why: the map is how a newcomer finds their room; a package added, renamed or removed without the map following
makes it lie. Every stage package is in both documents and nothing else is; every module is named in its row.
"""

from __future__ import annotations

import re
from pathlib import Path

import covar_harness

ROOT = Path(__file__).resolve().parents[2]
CORE = Path(covar_harness.__file__).parent


def _stage_packages() -> set[str]:
    return {p.parent.name for p in CORE.glob("*/__init__.py")}


def _contributing_rows() -> dict[str, str]:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    return dict(re.findall(r"^\| `(\w+)/` \| (.+) \|$", text, flags=re.M))


def test_contributing_maps_every_stage_package_and_nothing_else():
    assert set(_contributing_rows()) == _stage_packages()


def test_every_module_is_named_in_its_packages_row():
    for package, row in _contributing_rows().items():
        named = set(re.findall(r"`(\w+)/?`", row))
        modules = {p.stem for p in (CORE / package).glob("*.py") if p.stem != "__init__"}
        modules |= {p.parent.name for p in (CORE / package).glob("*/__init__.py")}
        assert modules <= named, f"{package}/: not in CONTRIBUTING.md: {sorted(modules - named)}"


def test_design_doc_lists_every_stage_package():
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    block = text[text.index("**The core's stage packages**") :]
    block = block[block.index("```") + 3 :]
    block = block[: block.index("```")]
    listed = set(re.findall(r"^(\w+)/", block, flags=re.M))
    assert listed == _stage_packages() - {"resources"}
