"""``covar-harness sanity``: the known-truth report (clean vs shortcut demo model) and its scoring functions."""

from __future__ import annotations

import json

import pytest

from covar_harness.run import sanity

EXPECTED_ROWS = {"paper", "area", "shapley", "counterfactual", "paper/random", "area/random"}


def test_sanity_prints_the_table_and_writes_the_json(tmp_path, capsys, covar_shapes_data):
    from covar_harness.cli.main import main

    path = tmp_path / "report" / "sanity.json"
    code = main(["sanity", "--limit", "24", "--json", str(path), "--data-dir", str(covar_shapes_data)])
    assert code == 0
    report = json.loads(path.read_text())
    assert set(report["rules"]) == EXPECTED_ROWS
    for name, row in report["rules"].items():
        assert 0.0 <= row["auroc"] <= 1.0, name
        assert {
            "auroc_original_correct",
            "auroc_bg_varied_errors",
            "agreement_with_counterfactual",
            "ms_per_image",
            "cost_vs_plain",
            "attributor",
        } <= set(row)
        assert row["cost_vs_plain"] > 1.0, "an attributor cannot be cheaper than the plain forward it extends"
    assert report["rules"]["shapley"]["attributor"] == "cci-shapley"
    assert report["rules"]["shapley"]["cost_vs_plain"] > report["rules"]["paper"]["cost_vs_plain"]  # 2^K vs K
    best = report["best_rule"]
    assert report["rules"][best]["auroc"] == max(r["auroc"] for r in report["rules"].values())
    assert report["rules"][best]["auroc"] >= 0.9, report["rules"]  # the known-truth goal, at this size too
    assert not best.endswith("/random")
    floor = max(
        report["rules"]["paper/random"]["auroc_original_correct"],
        report["rules"]["area/random"]["auroc_original_correct"],
    )
    assert report["rules"]["counterfactual"]["auroc_original_correct"] > floor + 0.2
    truth = report["counterfactual_truth"]["original_correct"]
    assert truth[sanity.SHORTCUT] > truth[sanity.CLEAN] + 0.3  # the planted shortcut shows in the truth itself
    assert report["acc1"][sanity.CLEAN][sanity.ORIGINAL] >= 0.8
    out = capsys.readouterr().out
    assert "which diagnosis to trust" in out and "counterfactual" in out and "paper/random" in out


def _row(correct: bool, score: float | None, driver: str | None, outcome: str | None) -> dict:
    return {
        "correct": correct,
        "scores": {"paper": score},
        "drivers": {"paper": driver},
        "counterfactual": None if outcome is None else {"outcome": outcome},
    }


def test_auroc_counts_undetermined_scores_as_a_coin_flip():
    clean = [_row(True, 0.9, "fg", "fg-sufficient"), _row(True, None, None, "both")]
    shortcut = [_row(True, 0.1, "bg", "bg-sufficient"), _row(True, 0.6, "fg", "bg-sufficient")]
    # pairs (clean > shortcut): 0.9>0.1, 0.9>0.6, 0.5>0.1, 0.5<0.6 -> 3/4
    assert sanity.auroc(clean, shortcut, "paper") == pytest.approx(0.75)
    assert sanity.auroc(clean, [], "paper") is None
    # agreement: driver bg <-> outcome bg-sufficient; the undetermined row is left out -> 2 of 3 agree
    assert sanity.agreement(clean + shortcut, "paper") == pytest.approx(2 / 3)
    assert sanity.truth_is_bg(_row(True, 0.5, "fg", None)) is None


def test_summary_uses_the_right_groups_and_names():
    """Original/correct and bg_varied/errors per model; rows named after the rule or rule/attributor."""

    def ev(rows):
        return sanity.Evaluation(rows, 1.0, 0.5)

    run = sanity.SanityRun(limit=2)
    clean_good, short_bad = _row(True, 0.9, "fg", "fg-sufficient"), _row(False, 0.1, "bg", "bg-sufficient")
    for attributor in (*sanity.ATTRIBUTORS, "plain"):
        for model in (sanity.CLEAN, sanity.SHORTCUT):
            rows = (
                [clean_good, short_bad]
                if model == sanity.CLEAN
                else [_row(True, 0.2, "bg", "bg-sufficient"), _row(False, 0.3, "bg", "bg-sufficient")]
            )
            for task in (sanity.ORIGINAL, sanity.BG_VARIED):
                run.evals[(model, task, attributor)] = ev(
                    [
                        {
                            **r,
                            "scores": {
                                rule: r["scores"]["paper"] for rule in ("paper", "area", "shapley", "counterfactual")
                            },
                            "drivers": {
                                rule: r["drivers"]["paper"] for rule in ("paper", "area", "shapley", "counterfactual")
                            },
                        }
                        for r in rows
                    ]
                )
    report = sanity.summarise(run)
    paper = report["rules"]["paper"]
    assert paper["auroc_original_correct"] == 1.0  # clean correct 0.9 vs shortcut correct 0.2
    assert paper["auroc_bg_varied_errors"] == 0.0  # clean error 0.1 vs shortcut error 0.3
    assert paper["auroc"] == pytest.approx(0.5) and paper["cost_vs_plain"] == pytest.approx(1.0)
    assert report["n"]["bg_varied_errors"] == {sanity.CLEAN: 1, sanity.SHORTCUT: 1}
    assert set(report["rules"]) == EXPECTED_ROWS
