"""Paired comparison of two models on the same samples (issue 26): McNemar and paired bootstrap for accuracy,
paired bootstrap for BG-Er and its null-corrected value; rank intervals in the leaderboard."""

import json

import numpy as np
import pytest

from covar_harness.common.metrics import mcnemar_exact, paired_ratio_difference
from covar_harness.leaderboard.compare import compare_diagnosis
from helpers import run_cli_inprocess as cli


def test_mcnemar_exact_against_the_binomial_by_hand():
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 9) == mcnemar_exact(9, 3) == pytest.approx(2 * sum([1, 12, 66, 220]) / 4096)


def test_paired_bootstrap_keeps_the_pairing():
    rng = np.random.default_rng(0)
    shared = rng.random(400) < 0.6  # what both models get right: paired, the difference is exactly 0 everywhere
    ones = np.ones(400)
    diff, interval, p = paired_ratio_difference(shared, ones, shared, ones)
    assert diff == 0.0 and interval == (0.0, 0.0) and p == 1.0
    better = shared | (rng.random(400) < 0.2)
    diff, (lo, hi), p = paired_ratio_difference(better, ones, shared, ones, clusters=np.arange(400) // 4)
    assert 0 < lo <= diff <= hi and p < 0.01
    # BG-Er over each model's own errors: undefined without errors
    assert paired_ratio_difference(ones, np.zeros(400), ones, ones) == (None, None, None)


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory, covar_shapes_data):
    out = tmp_path_factory.mktemp("compare") / "results"
    r = cli(
        "run",
        "--models",
        "demo",
        "--tasks",
        "covar-shapes/original,covar-shapes/bg_varied",
        "--data-dir",
        str(covar_shapes_data),
        "--output-dir",
        str(out),
        "--attribution",
        "none",
        "--log-samples",
        "--batch-size",
        "240",
        "--workers",
        "0",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_compare_demo_models_bg_varied_differs_original_does_not(demo_results):
    r = cli("compare", str(demo_results), "--models", "demo/shapes-clean,demo/shapes-shortcut", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = {row["task"]: row for row in json.loads(r.stdout)["rows"] if row["metric"] == "acc1"}
    original, varied = rows["covar-shapes/original"], rows["covar-shapes/bg_varied"]
    assert original["unit"] == "source_id" and original["n"] == 240
    assert original["p"] > 0.05 and original["interval"][0] <= 0 <= original["interval"][1]  # 95.0 vs 95.0
    assert varied["p"] < 1e-6 and varied["difference"] > 0.5 and varied["interval"][0] > 0
    md = cli("compare", str(demo_results), "--models", "demo/shapes-clean,demo/shapes-shortcut", "--format", "markdown")
    assert "| covar-shapes/bg_varied | acc1 |" in md.stdout and "mcnemar" in md.stdout
    bad = cli("compare", str(demo_results), "--models", "demo/shapes-clean")
    assert bad.returncode == 2


def test_leaderboard_shows_rank_intervals(demo_results):
    md = cli("leaderboard", str(demo_results), "--format", "markdown").stdout
    assert "### rank intervals: covar-shapes" in md
    line = next(x for x in md.splitlines() if x.startswith("| demo/shapes-clean") and "[" in x)
    assert "1 [1, 1]" in line  # bg_varied: the clean model is first in every replicate
    pair = "demo/shapes-clean,demo/shapes-shortcut"
    md = cli("leaderboard", str(demo_results), "--format", "markdown", "--compare", pair).stdout
    assert "### demo/shapes-clean (A) vs demo/shapes-shortcut (B), paired" in md and "mcnemar" in md


def _row(i: int, correct: bool, area: str | None, paper: str | None, bg_survives: bool) -> dict:
    cf = {"pred_bg_only": 1 if bg_survives else 0, "pred_fg_only": 0 if bg_survives else 1}
    return {
        "index": i,
        "file": f"f{i}",
        "correct": correct,
        "pred": 1,
        "error_type": None if correct else ("bg" if area == "bg" else "other"),
        "drivers": {"area": area, "paper": paper},
        "counterfactual": cf,
    }


def test_compare_diagnosis_headlines_raw_bg_er_per_rule_and_the_truth_not_minus_null():
    """Issue 23: the raw BG-Er under each rule both results logged and the counterfactual truth; no minus-null row
    (not a share). A rule that decided no error on one side is left out with a note, as its BG-Er is null."""
    rows_a = [_row(i, False, "bg" if i < 3 else "fg", "bg", i < 2) for i in range(4)]
    rows_b = [_row(i, i == 3, "fg", None, False) for i in range(4)]
    config = {"diagnosis": {"rules": ["area", "paper"]}}
    notes: list[str] = []
    out = compare_diagnosis("t", rows_a, rows_b, config, config, 200, 0, notes)
    by = {(c.metric, c.rule): c for c in out}
    assert set(by) == {("bg_er", "area"), ("bg_sufficient_rate", None)}
    assert (by[("bg_er", "area")].a, by[("bg_er", "area")].b) == (0.75, 0.0)
    assert by[("bg_er", "area")].title == "bg_er (area, harness rule)"
    assert (by[("bg_sufficient_rate", None)].a, by[("bg_sufficient_rate", None)].b) == (0.5, 0.0)
    assert notes == ["t: bg_er (paper) not compared: no error decided (or tested) on one side"]


def test_compare_truth_counts_the_errors_the_result_counts():
    """A region test where one region held no patch (pred_fg_only None) decides nothing, as in the result's own
    bg_sufficient_rate (``region_truth``): that error leaves the denominator instead of counting as tested."""
    rows_a = [_row(i, False, "bg", "bg", i < 3) for i in range(4)]
    rows_a[3]["counterfactual"]["pred_fg_only"] = None  # undecided: 3 of 3, not 3 of 4
    rows_b = [_row(i, False, "fg", "fg", False) for i in range(4)]
    config = {"diagnosis": {"rules": ["area"]}}
    by = {c.metric: c for c in compare_diagnosis("t", rows_a, rows_b, config, config, 200, 0, [])}
    assert (by["bg_sufficient_rate"].a, by["bg_sufficient_rate"].b) == (1.0, 0.0)


def test_paired_ratio_difference_between_subsets_pairs_by_unit():
    """clusters_b: the b rows are other samples of the same units. With identical per-unit values on both sides
    the difference is 0 in every replicate; the same rows with the units shuffled on one side are not paired."""
    values = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=float)
    units = [str(i) for i in range(8)]
    diff, interval, _ = paired_ratio_difference(values, np.ones(8), values, np.ones(8), units, clusters_b=units)
    assert diff == 0.0 and interval == (0.0, 0.0)
    _, (lo, hi), _ = paired_ratio_difference(values, np.ones(8), values, np.ones(8), units, clusters_b=units[::-1])
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="needs clusters"):
        paired_ratio_difference(values, np.ones(8), values, np.ones(8), clusters_b=units)
