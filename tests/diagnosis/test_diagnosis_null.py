"""The diagnosis against its null (issue 14 items 1, 2 and the source_id bootstrap of item 7): planted truths where
the null is known, both explained targets from one removal call, the null in the leaderboard, cluster intervals."""

import json

import numpy as np
import pytest
import torch

from covar_harness.common.metrics import bootstrap_interval
from covar_harness.diagnosis.rules import DiagnosisSettings, Evidence, diagnose_sample
from covar_harness.diagnosis.summary import diagnose, summarise
from covar_harness.leaderboard import render
from covar_harness.leaderboard import tables as lb
from covar_harness.pipeline.contract import PairContext
from result_records import valid_record
from toy_vit import GRID, TopLeftReader, load_masked, read, run_cli

FG4 = np.array([1.0, 0.0, 0.0, 0.0])  # 2x2 grid: patch 0 is the object


def row(index, label, pred, importance, assignments=(0, 1, 2, 3), **cci):
    return {
        "index": index,
        "label": label,
        "pred": pred,
        "cci": {"assignments": list(assignments), "importance": list(importance), **cci},
    }


# Planted truth with sparse importances (the planted-region model of the science audit): a 4x4 grid, the object
# is the top-left quarter, 7 clusters; all importance on one cluster, inside the object (an object-driven error,
# layout A) or outside it (background-driven, layout B).
OBJ16 = np.zeros(16)
OBJ16[[0, 1, 4, 5]] = 1.0
CLUSTERS16 = [0, 0, 1, 1, 0, 0, 1, 1, 2, 3, 4, 4, 2, 5, 6, 6]  # cluster 0 = the object, 1..6 background
READS_OBJECT, READS_BACKGROUND = [0.9, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0.9, 0, 0, 0]


def planted(n_a: int, n_b: int) -> tuple[list[dict], dict[int, np.ndarray]]:
    rows = [row(i, 0, 1, READS_OBJECT, CLUSTERS16) for i in range(n_a)]
    rows += [row(n_a + i, 0, 1, READS_BACKGROUND, CLUSTERS16) for i in range(n_b)]
    return rows, {r["index"]: OBJ16 for r in rows}


@pytest.mark.parametrize(("n_a", "n_b", "truth"), [(12, 0, 0.0), (0, 12, 1.0), (6, 6, 0.5)])
def test_raw_bg_er_is_the_planted_share_and_the_null_is_a_test(n_a, n_b, truth):
    """The raw share is exact on every planted truth. The null (one cluster in 7 carries everything, so under
    permutation the object's cluster gets it 1 time in 7) sits far from 50%: BG-Er minus null would read a
    half-background set as "below chance". The p-value asks the right question instead: more background-driven
    errors than uninformative importances give? Yes for all-background, no for all-object."""
    rows, grids = planted(n_a, n_b)
    for rule in ("area", "paper"):
        d = diagnose(rows, grids, None, DiagnosisSettings(rules=(rule,), null_draws=200))
        assert d.metrics["bg_er"] == truth, rule
        assert d.metrics["bg_er_null"] == pytest.approx(6 / 7, abs=0.05)
        assert "bg_er_minus_null" not in d.metrics and "bg_er_minus_null" not in d.by_rule[rule]
        p = d.metrics["bg_er_null_p"]
        if truth == 1.0:
            assert p == pytest.approx((6 / 7) ** 12, rel=0.6)  # every error bg, each with null probability ~6/7
        elif truth == 0.0:
            assert p == 1.0
        else:
            assert p > 0.9  # half background-driven is fewer than the null's 6 in 7: no evidence of more


def test_the_p_value_is_calibrated_when_importances_carry_no_information():
    """A check that can fail (unlike BG-Er minus null against i.i.d. importances, which is 0 by construction):
    with importances drawn i.i.d. over the clusters the null is true, so the one-sided p-value must not reject
    more often than its level, and must not pile up at 1 either (a wrong tail or a two-sided test would)."""
    rng = np.random.default_rng(3)
    ps = []
    for task in range(120):
        rows, grids = [], {}
        for i in range(20):
            assignments = rng.integers(0, 5, 16)
            rows.append(row(i, 0, 1, (rng.random(5) ** 4).tolist(), assignments.tolist()))
            fg = np.zeros(16)
            fg[: rng.integers(1, 12)] = 1.0
            grids[i] = fg
        d = diagnose(rows, grids, None, DiagnosisSettings(rules=("area",), bootstrap=10, seed=task))
        ps.append(d.metrics["bg_er_null_p"])
    ps = np.asarray(ps)
    assert (ps < 0.05).mean() <= 0.1
    assert 0.3 <= (ps < 0.5).mean() <= 0.7


def test_a_rule_undetermined_on_every_error_reports_null_not_zero():
    rows = [row(i, 0, 1, [-0.1, -0.2, 0.0, 0.0]) for i in range(3)]  # nothing positive: undetermined
    d = diagnose(rows, {i: FG4 for i in range(3)}, None, DiagnosisSettings(rules=("area",)))
    head = d.by_rule["area"]
    assert head["bg_er"] is None and head["fine_er"] is None and head["bg_er_null_p"] is None
    assert "bg_er" not in head["intervals"] and head["n_errors"] == 3 and head["n_errors_undetermined"] == 3


def test_counterfactual_truth_sits_beside_bg_er_with_each_rules_agreement():
    """bg_sufficient_rate: of the errors whose region test ran, the share whose wrong prediction (1) survives with
    only the background kept; compared with the model's own prediction whatever class was explained. The rule's
    sensitivity / specificity against it use the decisive errors (exactly one region keeps the prediction)."""
    rows, grids = planted(2, 2)  # errors 0, 1 object-driven, 2, 3 background-driven (label 0, prediction 1)
    regions = [(0, 1), (1, 1), (1, 0), (1, 0)]  # (pred with foreground only, with background only)
    for r, (p_fg, p_bg) in zip(rows, regions):
        r["counterfactual"] = {"pred_fg_only": p_fg, "pred_bg_only": p_bg, "s_fg_only": 0.1, "s_bg_only": 0.1}
    rows.append(row(4, 0, 1, READS_OBJECT, CLUSTERS16))  # no region test: left out of the truth's share
    grids[4] = OBJ16
    rows.append({**row(5, 0, 0, READS_OBJECT, CLUSTERS16), "counterfactual": {"pred_fg_only": 1, "pred_bg_only": 0}})
    grids[5] = OBJ16  # a correct decision: not an error, not in the truth's share
    d = diagnose(rows, grids, None, DiagnosisSettings(rules=("area", "paper")))
    assert d.metrics["bg_sufficient_rate"] == 0.5 and d.metrics["fg_sufficient_rate"] == 0.75
    assert d.config["counterfactual_truth"]["n_tested"] == 4 and "intervals" not in d.config["counterfactual_truth"]
    assert d.intervals["bg_sufficient_rate"][0] <= 0.5 <= d.intervals["bg_sufficient_rate"][1]
    vs = d.by_rule["area"]["vs_counterfactual"]
    # decisive: error 0 (bg-sufficient, called fg: missed), errors 2, 3 (fg-sufficient, called bg: both wrong)
    assert (vs["n_bg_sufficient"], vs["n_fg_sufficient"]) == (1, 2)
    assert vs["sensitivity"] == 0.0 and vs["specificity"] == 0.0


def test_null_keeps_undetermined_and_counts_are_reported():
    rows = [
        row(0, 0, 1, [-0.1, -0.2, 0.0, 0.0]),  # no positive importance: undetermined, also under the null
        row(1, 0, 1, [0.0, 0.9, 0.0, 0.0]),  # bg-driven error
        row(2, 0, 1, [0.9, 0.0, 0.0, 0.0]),  # error without a mask
        row(3, 0, 0, [0.9, 0.0, 0.0, 0.0]),  # correct
    ]
    d = diagnose(rows, {0: FG4, 1: FG4, 3: FG4}, None, DiagnosisSettings())
    head = d.by_rule["paper"]
    assert head["n_errors"] == 2 and head["n_errors_undetermined"] == 1 and head["n_errors_without_mask"] == 1
    assert head["errors_mean_area"] == pytest.approx(0.25)
    assert 0.0 < d.metrics["bg_er_null"] <= 0.5  # the undetermined error is 0 under the null too


def test_rules_without_importances_have_no_null():
    cf = {"s_fg_only": 0.1, "s_bg_only": 0.5}
    d = diagnose(
        [{**row(0, 0, 1, [0.9, 0, 0, 0]), "counterfactual": cf}],
        {0: FG4},
        None,
        DiagnosisSettings(rules=("counterfactual", "paper")),
    )
    assert d.metrics["bg_er"] == 1.0 and "bg_er_null" not in d.metrics
    assert d.by_rule["counterfactual"]["null"].startswith("none")
    assert d.by_rule["paper"]["bg_er_null"] is not None
    assert DiagnosisSettings().as_config()["null_draws"] == 20


def test_both_targets_from_the_logged_record():
    """``importance`` explains the prediction, ``importance_label`` the label: the pred target calls this error
    background-driven, the label target foreground-driven; the headline (bg_er) stays the pred one."""
    rows = [row(0, 0, 1, [0.0, 0.9, 0.0, 0.0], importance_label=[0.9, 0.0, 0.0, 0.0])]
    d = diagnose(rows, {0: FG4}, None, DiagnosisSettings())
    assert d.metrics["bg_er"] == 1.0 and d.metrics["bg_er_pred"] == 1.0 and d.metrics["bg_er_label"] == 0.0
    assert d.metrics["fine_er_pred"] == 0.0 and d.metrics["fine_er_label"] == 0.0
    # under --cci-target label the record holds importance_pred instead: the same two numbers
    flipped = [row(0, 0, 1, [0.9, 0.0, 0.0, 0.0], importance_pred=[0.0, 0.9, 0.0, 0.0])]
    e = diagnose(flipped, {0: FG4}, None, DiagnosisSettings())
    assert (e.metrics["bg_er_pred"], e.metrics["bg_er_label"], e.metrics["bg_er"]) == (1.0, 0.0, 0.0)
    # an older log without the second target: no per-target numbers, nothing else changes
    old = diagnose([row(0, 0, 1, [0.0, 0.9, 0.0, 0.0])], {0: FG4}, None, DiagnosisSettings())
    assert "bg_er_label" not in old.metrics and old.metrics["bg_er"] == 1.0


def test_both_targets_come_from_one_removal_call(toy_data):
    """The attribution step scores the label's importances from the removal embeddings it already has: one
    encode_images_without call for the batch, and the label's numbers equal a separate run explaining the label."""
    from covar_harness.attribution.step import AttributionStep
    from covar_harness.pipeline.contract import Batch

    samples = load_masked({"path": str(toy_data)}, toy_data)
    adapter = TopLeftReader()
    pixels = torch.stack([adapter.preprocess(samples.open_image(i)) for i in (1, 3)])
    emb = torch.nn.functional.normalize(adapter.encode_images(pixels), dim=-1)
    W = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # columns: background, object
    batch = Batch([1, 3], pixels, emb, W, emb @ W, torch.tensor([1, 1]), samples)
    pred_step = AttributionStep("cci")
    pred_step.start(PairContext(adapter, None, samples))
    records = pred_step.process(batch)
    assert adapter.calls == [(2, 7, GRID * GRID)], "one removal call for both targets"
    label_adapter = TopLeftReader()
    label_step = AttributionStep("cci", target="label")
    label_step.start(PairContext(label_adapter, None, samples))
    by_label = label_step.process(batch)
    for pred_rec, label_rec in zip(records, by_label):
        assert pred_rec.cci.importance_label == pytest.approx(label_rec.cci.importance, abs=1e-6)
        assert label_rec.cci.importance_pred == pytest.approx(pred_rec.cci.importance, abs=1e-6)
        logged = pred_rec.log_fields()["cci"]
        assert list(logged)[:6] == ["method", "target", "k", "assignments", "importance", "s"]
        assert "importance_label" in logged and "importance_pred" not in logged


def test_a_run_carries_the_null_both_targets_and_the_counts(tmp_path, toy_catalog, masked_task):
    code, out = run_cli(tmp_path, "toy-topleft", masked_task, "--attribution", "cci", "--driver-rule", "paper,area")
    assert code == 0
    record, rows = read(out, "toy-topleft", "toy/masked")
    diag = record["config"]["diagnosis"]
    assert diag["headline_target"] == "pred" and diag["null_draws"] == 20 and diag["bootstrap_unit"] == "sample"
    assert {"bg_er_null", "bg_er_null_p", "bg_er_pred", "bg_er_label", "bg_sufficient_rate"} <= set(record["metrics"])
    # the toy's one error has no positive importance for its prediction: undetermined, so BG-Er says nothing (null,
    # not 0.0 [0, 0]); explaining the label decides it
    assert record["metrics"]["bg_er"] is None and record["metrics"]["bg_er_pred"] is None
    assert record["metrics"]["bg_er_label"] == 0.0 and diag["by_rule"]["paper"]["n_errors_undetermined"] == 1
    # the counterfactual truth beside it, rule-free: with two classes both regions keep the toy's prediction
    assert diag["counterfactual_truth"]["n_tested"] == 1 and record["intervals"]["bg_sufficient_rate"] == [1.0, 1.0]
    assert all(len(row["cci"]["importance_label"]) == 7 for row in rows)


def _diag_record(subset: str, bg_er: float, p: float | None, rule: str = "paper") -> dict:
    rec = valid_record(model="demo/shapes-shortcut", task=f"covar-shapes/{subset}")
    rec["metrics"].update({"fg_driven_rate": 0.5, "bg_er": bg_er, "fine_er": 0.0})
    if p is not None:
        rec["metrics"].update({"bg_er_null": 0.35, "bg_er_null_p": p, "bg_sufficient_rate": 0.8})
    counts = {"n_errors": 12, "n_errors_undetermined": 1, "n_errors_without_mask": 0, "errors_mean_area": 0.2}
    rec["config"]["diagnosis"] = {"rules": [rule], "by_rule": {rule: counts}}
    return rec


def test_leaderboard_names_the_rule_and_shows_the_p_value_and_the_truth_beside_bg_er():
    records = [_diag_record("bg_varied", 0.9, 0.00012), _diag_record("hflip", 0.25, None)]
    tables = lb.build_tables(records)
    diag = next(t for t in tables if "diagnosis" in t.title)
    assert diag.columns == [
        "Model",
        "Bg-varied BG-Er (paper rule, inferred)",
        "Bg-varied BG-Er p vs null",
        "Bg-varied bg-sufficient (counterfactual)",
        "Bg-varied Fine-Er (paper rule, inferred)",
        "H-flip BG-Er (paper rule, inferred)",
        "H-flip Fine-Er (paper rule, inferred)",
    ]
    assert diag.rows[0][1:5] == [90.0, "0.00012", 80.0, 0.0]  # the p-value is a probability, not a percentage
    assert "| 90.0 | 0.00012 | 80.0 | 0.0 |" in render.render_markdown(tables)
    csv_text = render.render_csv(records)
    assert 'covar-shapes/bg_varied,1,bg_er_null_p,0.00012,8,False,"paper rule, inferred"' in csv_text
    assert "covar-shapes/bg_varied,1,diagnosis_n_errors_undetermined,1" in csv_text
    rows = json.loads(render.render_json(records, tables))["results"]
    assert {r["metric"] for r in rows} >= {"bg_er_null", "diagnosis_n_errors", "diagnosis_errors_mean_area"}
    assert {r["rule"] for r in rows if r["metric"] == "bg_er"} == {"paper rule, inferred"}
    assert {r["rule"] for r in rows if r["metric"] == "acc1"} == {None}
    # results with different headline rules: the column says so rather than naming one of them
    mixed = [_diag_record("bg_varied", 0.9, None, "area"), _diag_record("bg_varied", 0.5, None)]
    mixed[1]["model"]["spec"] = "other"
    cols = next(t for t in lb.build_tables(mixed) if "diagnosis" in t.title).columns
    assert cols[1] == "Bg-varied BG-Er (mixed rules: area, paper)"


def test_cluster_bootstrap_widens_intervals_for_identical_variants():
    """Ten source objects, eight identical variants each: 80 rows but 10 independent draws. Resampling objects
    gives the wider, honest interval; the point estimate does not change."""
    per_object = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], dtype=float)
    values = np.repeat(per_object, 8)
    clusters = [str(i) for i in np.repeat(np.arange(10), 8)]
    lo_p, hi_p = bootstrap_interval(values, seed=0)
    lo_c, hi_c = bootstrap_interval(values, seed=0, clusters=clusters)
    assert (hi_c - lo_c) > 1.8 * (hi_p - lo_p)
    # the same through the diagnosis: errors carrying their source_id
    settings = DiagnosisSettings(bootstrap=500)
    imp = {1.0: [0.0, 0.9, 0.0, 0.0], 0.0: [0.9, 0.0, 0.0, 0.0]}  # bg-driven / fg-driven
    records = [
        diagnose_sample(i, 0, 1, Evidence([0, 1, 2, 3], imp[v]), FG4, None, settings, str(i), cluster=c)
        for i, (v, c) in enumerate(zip(values, clusters))
    ]
    plain = [
        diagnose_sample(i, 0, 1, Evidence([0, 1, 2, 3], imp[v]), FG4, None, settings) for i, v in enumerate(values)
    ]
    d_c, d_p = summarise(records, settings, False), summarise(plain, settings, False)
    assert d_c.metrics == d_p.metrics and d_c.config["bootstrap_unit"] == "source_id"
    assert d_p.config["bootstrap_unit"] == "sample"
    width = {k: hi - lo for k, (lo, hi) in (("c", d_c.intervals["bg_er"]), ("p", d_p.intervals["bg_er"]))}
    assert width["c"] > 1.8 * width["p"]


def test_the_signed_difference_has_its_interval_in_the_result_and_validates():
    from covar_harness.results.validation import validate

    errors = validate({"intervals": {"bg_er_minus_null": [-0.7, -0.4], "bg_er": [-0.1, 0.2]}})
    assert not any("bg_er_minus_null" in e for e in errors)
    assert any("intervals.bg_er: must satisfy 0 <= low" in e for e in errors)
