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


def test_tests_mirror_the_stages_and_are_named_after_behaviour():
    """Issue 22 item 7: a test folder per stage (plus packaging), and no test file named after the issue, round or
    audit that added it (``test_issue_12.py``, ``test_hardening_round2.py``): a name must say what breaks."""

    tests = ROOT / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert folders <= _stage_packages() | {"packaging"}, folders - _stage_packages()
    named = [p.name for p in tests.rglob("test_*.py") if re.search(r"issue|round\d|audit|_\d+\.py$", p.name)]
    assert not named, named
