"""Paired comparison of two models on the same samples (issue 26): McNemar and paired bootstrap for accuracy,
paired bootstrap for BG-Er and its null-corrected value; rank intervals in the leaderboard."""

import json

import numpy as np
import pytest

from covar_harness.common.metrics import mcnemar_exact, paired_ratio_difference
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
