"""Driver rules, error types and BG-Er / Fine-Er on hand-made records."""

import numpy as np
import pytest

from covar_harness.data.class_groups import share_group
from covar_harness.diagnosis.rules import DiagnosisSettings, density_ratio, fg_fraction
from covar_harness.diagnosis.summary import diagnose

# a 2x2 patch grid: patch 0 is the object, patches 1-3 background
FG = np.array([1.0, 0.0, 0.0, 0.0])


def row(index, label, pred, importance, assignments=(0, 1, 1, 1), **extra):
    return {
        "index": index,
        "label": label,
        "pred": pred,
        "correct": label == pred,
        "cci": {"assignments": list(assignments), "importance": list(importance)},
        **extra,
    }


def test_fg_fraction_uses_positive_mass_only():
    assert fg_fraction(np.array([0.6, 0.2, -1.0, 0.2]), FG) == pytest.approx(0.6)
    assert fg_fraction(np.array([-0.1, -0.2, 0, 0]), FG) is None
    # density: equal importance everywhere -> 0.5 whatever the object size
    assert density_ratio(np.array([0.1, 0.1, 0.1, 0.1]), FG) == pytest.approx(0.5)
    assert fg_fraction(np.array([0.1, 0.1, 0.1, 0.1]), FG) == pytest.approx(0.25)


def test_fine_grained_needs_a_shared_group():
    groups = {0: "cat", 1: "cat", 2: "dog"}
    assert share_group(groups, 0, 1) and not share_group(groups, 0, 2)
    assert not share_group(None, 0, 1) and not share_group(groups, 3, 4) and not share_group(groups, 0, 0)


def test_bg_er_and_fine_er_are_shares_of_misclassified():
    groups = {0: "felid", 1: "felid", 2: "other"}
    rows = [
        row(0, 0, 0, [0.9, 0.1]),  # correct, fg-driven
        row(1, 0, 1, [0.8, 0.1]),  # error, fg-driven, same group -> fine
        row(2, 0, 2, [0.8, 0.1]),  # error, fg-driven, other group -> other
        row(3, 0, 1, [0.05, 0.9]),  # error, bg-driven -> bg
        row(4, 0, 1, [-0.1, -0.2]),  # error, no positive importance -> undetermined -> other
    ]
    grids = {i: FG for i in range(5)}
    d = diagnose(rows, grids, groups, DiagnosisSettings(bootstrap=200))
    assert d.metrics["bg_er"] == pytest.approx(1 / 4)
    assert d.metrics["fine_er"] == pytest.approx(1 / 4)
    assert d.metrics["fg_driven_rate"] == pytest.approx(3 / 4)
    assert [d.per_sample[i].get("error_type") for i in range(5)] == [None, "fine", "other", "bg", "other"]
    assert d.per_sample[3]["driver"] == "bg" and d.per_sample[4]["driver"] is None
    assert d.by_rule["paper"]["n_undetermined"] == 1
    lo, hi = d.intervals["bg_er"]
    assert 0 <= lo <= 0.25 <= hi <= 1


def test_samples_without_masks_are_left_out():
    rows = [row(0, 0, 1, [0.05, 0.9]), row(1, 0, 1, [0.9, 0.05])]
    d = diagnose(rows, {1: FG}, None, DiagnosisSettings(bootstrap=50))
    assert d.metrics["bg_er"] == 0.0 and d.by_rule["paper"]["n_errors"] == 1
    assert "error_type" in d.per_sample[0] and d.per_sample[0]["error_type"] is None


def test_threshold_and_several_rules_at_once():
    # object small: a little importance on it, background spread -> paper says bg, area says fg
    r = row(
        0,
        0,
        0,
        [0.3, 0.2],
        assignments=(0, 1, 1, 1),
        shapley={"values": [0.9, 0.0]},
        counterfactual={"s_fg_only": 0.2, "s_bg_only": 0.4},
    )
    d = diagnose(
        [r], {0: FG}, None, DiagnosisSettings(rules=("paper", "area", "shapley", "counterfactual"), bootstrap=10)
    )
    assert d.per_sample[0]["drivers"] == {"paper": "bg", "area": "fg", "shapley": "fg", "counterfactual": "bg"}
    assert d.per_sample[0]["driver"] == "bg"  # the first rule is the headline
    assert diagnose([r], {0: FG}, None, DiagnosisSettings(threshold=0.3, bootstrap=10)).per_sample[0]["driver"] == "fg"
