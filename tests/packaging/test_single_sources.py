"""Issue 13 items 3 and 5: one COVAR subset list, one CSV reader, one slug function, one signature policy, and a
design document that every "docs/design.md section N" reference in the repository points into.

The source scans below pin "one": a second copy written later fails here, with the file that holds it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from covar_harness.catalog.plugin_manager import Keywords, call_with_accepted, keywords_of
from covar_harness.common.safe_files import slug
from covar_harness.data import subsets
from covar_harness.data.resources import read_csv
from covar_harness.data.subsets import COVAR_SUBSETS, SUBSET_TITLES

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("harness", "plugins", "tasks", "scripts")
# Files of the parallel attribution/evaluator refactor (issue 13 items 1-2) that still carry their own signature
# inspection or "DESIGN N" references; the lead moves them onto the shared helpers and empties these tuples.
PENDING_SIGNATURE: tuple[str, ...] = ()
PENDING_DESIGN_REFS: tuple[str, ...] = ()


def _code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")) + [ROOT / "tests" / "helpers.py"]


def _holders(pattern: str, files: list[Path]) -> list[str]:
    rx = re.compile(pattern)
    return sorted({str(p.relative_to(ROOT)) for p in files if rx.search(p.read_text(encoding="utf-8"))})


# ---- one subset list -------------------------------------------------------------------------------------------
def test_the_leaderboard_uses_the_one_list_in_the_papers_column_order():
    assert COVAR_SUBSETS is COVAR_SUBSETS
    published = [c[len("acc_") :] for c in read_csv("reference", "paper_covar_results.csv")[0] if c.startswith("acc_")]
    assert tuple(published) == (*COVAR_SUBSETS, "avg")
    assert subsets.ALL_SUBSETS == ("original", *COVAR_SUBSETS)
    assert set(SUBSET_TITLES) == set(subsets.ALL_SUBSETS)


@pytest.mark.parametrize("family", ["covar", "covar-shapes"])
def test_the_shipped_task_files_cover_exactly_the_subsets(family):
    files = sorted((ROOT / "tasks" / "covar_harness_tasks" / family).glob("*.yaml"))
    assert {f.stem for f in files} == set(subsets.ALL_SUBSETS)
    for f in files:
        task = yaml.safe_load(f.read_text(encoding="utf-8"))
        assert task["task"] == f"{family}/{f.stem}" and task["dataset"]["subset"] == f.stem


def test_no_other_module_spells_out_a_subset_list():
    names = "|".join(subsets.ALL_SUBSETS)
    four_in_a_row = rf"""["']({names})["'](\s*,\s*["']({names})["']){{3}}"""
    assert _holders(four_in_a_row, _code_files()) == ["harness/covar_harness/data/subsets.py"]


# ---- one CSV reader ------------------------------------------------------------------------------------------
def test_one_csv_reader():
    assert _holders(r"csv\.(DictReader|reader)\(|read_csv\(\s*[\"'][^\"']+\.csv", _code_files()) == [
        "harness/covar_harness/data/resources.py"
    ]
    from covar_harness_plugins import paper

    assert paper.paper_rows() == read_csv("reference", "paper_models.csv") and len(paper.paper_rows()) == 18


# ---- one slug --------------------------------------------------------------------------------------------------
def test_one_slug_function_with_the_build_covar_form_unchanged():
    assert _holders(r"def _?slug\(", _code_files()) == ["harness/covar_harness/common/safe_files.py"]
    assert slug("ice bear", hashed=False) == "ice-bear"  # build-covar class folders and object ids
    assert slug("ice bear/one:two", hashed=False) == "ice-bear-one-two"
    assert slug("", hashed=False) == "x"
    for safe in ("circle-circle0", "grass-07", "ell-e0"):  # COVAR-Shapes and build-covar ids: both forms agree
        assert slug(safe) == slug(safe, hashed=False) == safe


# ---- one signature policy --------------------------------------------------------------------------------------
def test_one_place_reads_signatures():
    holders = _holders(r"inspect\.signature\(", _code_files())
    assert [h for h in holders if not h.startswith(PENDING_SIGNATURE)] == [
        "harness/covar_harness/catalog/plugin_manager.py"
    ]


def test_the_signature_policy():
    def named(a, /, b, *, c=1):
        return a, b, c

    def catch_all(**kw):
        return kw

    assert keywords_of(named) == Keywords(frozenset({"b", "c"}), False)  # positional-only cannot be passed by name
    assert call_with_accepted(lambda b, c=0: (b, c), a=1, b=2, c=3, d=4) == (2, 3)
    assert call_with_accepted(catch_all, a=1, b=2) == {"a": 1, "b": 2}
    assert keywords_of(catch_all).accepts("layer") and not keywords_of(catch_all).accepts("layer", explicit=True)
    assert keywords_of(max) == Keywords()  # no readable signature: offered nothing
    assert call_with_accepted(dict, a=1) == {}


# ---- the design document ---------------------------------------------------------------------------------------
def _design_sections() -> dict[int, str]:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    parts = re.split(r"(?m)^## (\d+)\. ", text)
    return {int(number): body for number, body in zip(parts[1::2], parts[2::2])}


def test_the_design_document_keeps_its_numbered_sections():
    assert sorted(_design_sections()) == list(range(1, 12))  # 11: concept naming (issue 27), added on purpose
    assert "[open]" in (ROOT / "docs" / "design.md").read_text(encoding="utf-8")


def _text_files() -> list[Path]:
    tracked = [p for d in (*CODE_DIRS, "tests", "docs") for p in (ROOT / d).rglob("*") if p.is_file()]
    tracked += [ROOT / n for n in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md", "pyproject.toml")]
    return [p for p in tracked if p.suffix in (".py", ".md", ".yaml", ".toml", ".txt") and p.exists()]


def test_every_design_reference_points_into_the_document():
    sections = _design_sections()
    for path in _text_files():
        for number, item in re.findall(r"docs/design\.md section (\d+)(?:\.(\d+))?", path.read_text("utf-8")):
            where = f"{path.relative_to(ROOT)}: section {number}{'.' + item if item else ''}"
            assert int(number) in sections, where
            assert not item or re.search(rf"(?m)^{item}\. ", sections[int(number)]), where


def test_no_reference_to_the_old_design_file_outside_the_pending_list():
    old = r"DESIGN(\.md| section \d| \d|:)"
    stale = [str(p.relative_to(ROOT)) for p in _text_files() if re.search(old, p.read_text("utf-8"))]
    here = str(Path(__file__).resolve().relative_to(ROOT))
    stale = [s for s in stale if not s.startswith(PENDING_DESIGN_REFS) and s != here]
    assert stale == []
