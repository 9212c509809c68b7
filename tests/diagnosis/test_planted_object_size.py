"""Object size with a known truth (issue 23 item 3), replacing the old "known truth" that the clean demo model's
BG-Er must not change from Crop to Scale (the counterfactual truth itself moves there): a planted reader whose
errors are object- or background-driven by construction, on two subsets of the same 12 source objects, one with
large objects (Crop-like) and one with small ones (Scale-like).

The reader reads the top-left 2x2 patches of an 8x8 grid and nothing else (``toy_vit.SizedReader``); an error is
object-driven exactly when the object covers those patches, background-driven when it misses them. Per source:
- 4 sources: a large object over the read patches, shrunk onto exactly the read patches (object-driven in both);
- 4 sources: a large object over them, shrunk towards its centre, off them (object-driven large, background small);
- 4 sources: off the read patches in both sizes (background-driven in both).
True BG-Er: large 4/12, small 8/12, so small minus large is +33.3 points. Both are tested with the tool: raw BG-Er
under `area` and `paper`, the counterfactual truth, and ``compare --between`` (paired by source object)."""

from __future__ import annotations

import json

import pytest

from covar_harness.catalog import plugin_manager
from covar_harness.cli.main import main
from covar_harness.leaderboard.compare import compare_subsets
from helpers import patch_everywhere
from toy_vit import ToyPlugin, painted, task_yaml, write_sourced

WHITE = (255, 255, 255)
GRID = 8
BOTH_OBJECT, SHRINKS_OFF, BOTH_BACKGROUND = range(3)
# (top row, left col, height, width) of the object in the large and the small subset
LAYOUTS = {
    BOTH_OBJECT: ((0, 0, 6, 6), (0, 0, 2, 2)),
    SHRINKS_OFF: ((0, 0, 6, 6), (3, 3, 2, 2)),
    BOTH_BACKGROUND: ((2, 2, 6, 6), (5, 5, 2, 2)),
}
TRUTH = {"large": 4 / 12, "small": 8 / 12}  # share of background-driven errors


def cells(rect: tuple[int, int, int, int]) -> set[tuple[int, int]]:
    top, left, h, w = rect
    return {(r, c) for r in range(top, top + h) for c in range(left, left + w)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Both subsets run through the real CLI with CCI, both rules and sample logs."""
    base = tmp_path_factory.mktemp("sized")
    tasks = []
    for size, which in (("large", 0), ("small", 1)):
        images = {}
        for j in range(12):
            rect = LAYOUTS[j // 4][which]
            images[f"src{j:02d}"] = (
                painted(GRID, dict.fromkeys(cells(rect), WHITE), seed=100 * which + j),
                cells(rect),
                GRID,
            )
        data = write_sourced(base / size, images)
        tasks.append(str(task_yaml(base / "tasks" / f"{size}.yaml", f"toy/{size}", data)))
    original = plugin_manager.load_catalog
    mp = pytest.MonkeyPatch()
    patch_everywhere(mp, plugin_manager, "load_catalog", lambda p=(), a=None, e=(): original(p, a, [*e, ToyPlugin()]))
    try:
        args = ["run", "--models", "toy-sized", "--tasks", ",".join(tasks), "--output-dir", str(base / "out")]
        args += ["--attribution", "cci", "--driver-rule", "area,paper", "--log-samples", "--workers", "0"]
        assert main(args) == 0
    finally:
        mp.undo()
    return base / "out"


def _result(out, size: str) -> dict:
    return json.loads(next(p for p in out.rglob(f"toy__{size}.json")).read_text())


@pytest.mark.parametrize("size", ["large", "small"])
def test_raw_bg_er_and_the_counterfactual_truth_equal_the_planted_share_at_each_size(results, size):
    """Every decision is an error (the reader always says "object"); the raw share under both rules and the
    share of errors whose prediction survives with the background alone are the planted truth, exactly."""
    r = _result(results, size)
    by_rule = r["config"]["diagnosis"]["by_rule"]
    assert r["metrics"]["acc1"] == 0.0 and by_rule["area"]["n_errors"] == 12
    assert r["metrics"]["bg_er"] == pytest.approx(TRUTH[size])
    assert by_rule["paper"]["bg_er"] == pytest.approx(TRUTH[size])
    assert r["metrics"]["bg_sufficient_rate"] == pytest.approx(TRUTH[size])
    assert r["metrics"]["fg_sufficient_rate"] == pytest.approx(1 - TRUTH[size])


def test_between_subsets_the_paired_difference_is_the_planted_one(results):
    """``compare --between``: small minus large is +33.3 points for BG-Er under each rule and for the truth, with
    a bootstrap over the 12 source objects that excludes 0 (4 of 12 sources change driver with size)."""
    rows, notes = compare_subsets(results, "toy-sized", "toy/small", "toy/large", n_boot=2000)
    assert notes[0].startswith("toy/small vs toy/large: 12 of 12 source objects")
    by = {(r.metric, r.rule): r for r in rows}
    assert set(by) == {("acc1", None), ("bg_er", "area"), ("bg_er", "paper"), ("bg_sufficient_rate", None)}
    for key in (("bg_er", "area"), ("bg_er", "paper"), ("bg_sufficient_rate", None)):
        row = by[key]
        assert row.difference == pytest.approx(1 / 3) and row.unit == "source_id" and row.n == 12, key
        lo, hi = row.interval
        assert 0 < lo < 1 / 3 < hi < 0.75, key
    assert by[("acc1", None)].difference == 0.0  # every decision is an error in both subsets


def test_between_subsets_from_the_cli_and_its_refusals(results, capsys):
    args = ["compare", str(results), "--models", "toy-sized", "--between", "toy/small,toy/large"]
    assert main([*args, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "toy-sized: toy/small (A) vs toy/large (B), paired by source object" in out
    assert "| toy/small - toy/large | bg_er (area, harness rule) | 66.7 | 33.3 | 33.3 |" in out
    assert main([*args[:-1], "toy/small"]) == 2  # one task
    assert main(["compare", str(results), "--models", "toy-sized,other", "--between", "toy/small,toy/large"]) == 2
