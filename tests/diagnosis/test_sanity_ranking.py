"""Issue 14 item 3 and issue 23: the sanity suite ranks the driver rules on the column that discriminates (AUROC on
correct decisions of ``covar-shapes/original``) with bootstrap intervals and paired differences, calls the region
test a proxy truth, labels the paper's rule as inferred, measures each rule's sensitivity / specificity against
the counterfactual truth. (Object size with a known truth: tests/diagnosis/test_planted_object_size.py.)"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from covar_harness.run import sanity

RULES = ("paper", "area", "shapley", "counterfactual")


def _row(correct: bool, score: float) -> dict:
    return {
        "correct": correct,
        "scores": dict.fromkeys(RULES, score),
        "drivers": dict.fromkeys(RULES, "fg" if score >= 0.5 else "bg"),
        "counterfactual": {"outcome": "fg-sufficient" if score >= 0.5 else "bg-sufficient"},
    }


def _run() -> sanity.SanityRun:
    """Clean correct decisions score 0.6-0.9, shortcut ones 0.1-0.7 (overlap: AUROC < 1); bg_varied errors
    are reversed, so a ranking on the mean would differ from one on original / correct for no rule here."""
    run = sanity.SanityRun(limit=8, seed=3)
    clean = [_row(True, 0.6 + 0.05 * i) for i in range(7)] + [_row(False, 0.2)]
    short = [_row(True, 0.1 + 0.1 * i) for i in range(7)] + [_row(False, 0.8)]
    for attributor in (*sanity.ATTRIBUTORS, "plain"):
        for task in (sanity.ORIGINAL, sanity.BG_VARIED):
            run.evals[(sanity.CLEAN, task, attributor)] = sanity.Evaluation(clean, 1.0, 0.9)
            run.evals[(sanity.SHORTCUT, task, attributor)] = sanity.Evaluation(short, 1.0, 0.9)
    return run


def test_every_auroc_has_a_seeded_interval_around_it():
    report = sanity.summarise(_run())
    for name, row in report["rules"].items():
        for key in ("auroc_original_correct", "auroc_bg_varied_errors", "auroc"):
            lo, hi = row["intervals"][key]
            assert lo <= row[key] <= hi, (name, key)
    again = sanity.summarise(_run())
    assert again["rules"]["paper"]["intervals"] == report["rules"]["paper"]["intervals"]  # seeded
    lo, hi = report["rules"]["paper"]["intervals"]["auroc_original_correct"]
    assert hi - lo > 0.01  # overlapping scores: a real interval, not a point
    assert report["bootstrap"]["seed"] == 3


def test_ranking_is_on_the_original_correct_column_and_the_truth_is_a_proxy():
    report = sanity.summarise(_run())
    assert report["ranked_by"] == "auroc_original_correct"
    values = [report["rules"][n]["auroc_original_correct"] for n in report["ranking"]]
    assert values == sorted(values, reverse=True)
    assert report["best_rule"] == report["ranking"][0]
    assert "proxy" in report["truth"]
    assert report["rules"]["paper"]["inferred"] and not report["rules"]["area"]["inferred"]


def test_the_table_prints_intervals_ranks_the_proxy_and_the_inferred_label():
    report = sanity.summarise(_run())
    buf = io.StringIO()
    sanity.render(report, Console(file=buf, width=250, force_terminal=False))
    out = buf.getvalue()
    lo, hi = report["rules"]["paper"]["intervals"]["auroc_original_correct"]
    assert f"{report['rules']['paper']['auroc_original_correct']:.2f} [{lo:.2f}, {hi:.2f}]" in out
    assert "paper (inferred)" in out and "proxy truth" in out and "ranked by AUROC on original/correct" in out
    assert "agree" not in out.replace("agrees w/ cf proxy", "")  # no agreement argument beyond the column


def test_readme_argues_from_the_discriminating_column_not_agreement():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Which diagnosis to trust", 1)[1].split("\n## ", 1)[0]
    assert "best agreement" not in section and "proxy truth" in section and "inferred" in section


def test_sensitivity_and_specificity_against_the_counterfactual_truth():
    """On the decisive samples: called bg among background-sufficient, fg among foreground-sufficient."""
    rows = [
        {"drivers": {"area": "bg"}, "counterfactual": {"outcome": "bg-sufficient"}},
        {"drivers": {"area": "fg"}, "counterfactual": {"outcome": "bg-sufficient"}},  # missed
        {"drivers": {"area": None}, "counterfactual": {"outcome": "bg-sufficient"}},  # undetermined: a miss
        {"drivers": {"area": "fg"}, "counterfactual": {"outcome": "fg-sufficient"}},
        {"drivers": {"area": "bg"}, "counterfactual": {"outcome": "both"}},  # not decisive: left out
        {"drivers": {"area": "bg"}, "counterfactual": None},
    ]
    got = sanity.sensitivity_specificity(rows, "area")
    assert got == {"sensitivity": pytest.approx(1 / 3), "specificity": 1.0, "n_bg_sufficient": 3, "n_fg_sufficient": 1}
    report = sanity.summarise(_run())
    assert report["rules"]["area"]["sensitivity"] == 1.0 and report["rules"]["area"]["specificity"] == 1.0


def test_ranked_rows_are_compared_with_a_paired_bootstrap():
    """Rows scoring the same samples identically differ by exactly 0 under the paired bootstrap (their marginal
    intervals are wide); a row that scores differently gets a real interval around its difference."""
    report = sanity.summarise(_run())
    diffs = report["paired_differences"]
    assert [d["upper"] for d in diffs] == report["ranking"][:-1]
    assert [d["lower"] for d in diffs] == report["ranking"][1:]
    same = [d for d in diffs if d["difference"] == 0.0]
    assert same and all(d["interval"] == [0.0, 0.0] for d in same)
    run = _run()
    flipped = [
        {**r, "scores": {**r["scores"], "shapley": 1.0 - r["scores"]["shapley"]}}
        for r in run.evals[(sanity.CLEAN, sanity.ORIGINAL, "cci-shapley")].rows
    ]
    run.evals[(sanity.CLEAN, sanity.ORIGINAL, "cci-shapley")] = sanity.Evaluation(flipped, 1.0, 0.9)
    report = sanity.summarise(run)
    last = report["paired_differences"][-1]
    assert last["lower"] == "shapley" and last["interval"][0] <= last["difference"] <= last["interval"][1]
    assert last["interval"][0] > 0  # clearly above the flipped row
    buf = io.StringIO()
    sanity.render(report, Console(file=buf, width=250, force_terminal=False))
    assert "minus next (paired)" in buf.getvalue() and "sens / spec vs cf" in buf.getvalue()
