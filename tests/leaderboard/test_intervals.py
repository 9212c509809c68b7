"""Honest intervals (issue 14 item 7): class-stratified bootstrap for class-balanced accuracy, bootstrap AUROC
replicates, and the subset average's interval propagated from per-subset intervals (csv / json / caption)."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from covar_harness.common.metrics import (
    auroc_replicates,
    average_interval,
    per_class_recall,
    per_class_recall_interval,
    percentile_interval,
)
from covar_harness.data.subsets import COVAR_SUBSETS
from covar_harness.leaderboard import render
from covar_harness.leaderboard import tables as lb
from helpers import run_cli_inprocess as cli


def test_per_class_recall_interval_resamples_within_each_class():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [90, 8, 30])  # unbalanced: a per-sample bootstrap could drop class 1
    correct = rng.random(labels.size) < np.where(labels == 1, 0.3, 0.9)
    lo, hi = per_class_recall_interval(labels, correct, seed=1)
    assert lo <= per_class_recall(labels, correct) <= hi and hi - lo > 0.05
    assert per_class_recall_interval(labels, correct, seed=1) == (lo, hi)  # seeded
    # a class that is always right and one always wrong: every replicate keeps both, so the interval is a point
    assert per_class_recall_interval(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == (0.5, 0.5)
    assert per_class_recall_interval(np.array([]), np.array([])) is None


def test_per_class_recall_interval_with_clusters_resamples_whole_sources():
    labels = np.repeat([0, 1], 40)
    correct = np.tile(np.repeat([1.0, 0.0], 4), 10)  # within a source all right or all wrong: correlated
    sources = [f"{c}-{i // 4}" for c, i in zip(labels, range(80))]
    plain = per_class_recall_interval(labels, correct, seed=0)
    clustered = per_class_recall_interval(labels, correct, seed=0, clusters=sources)
    assert clustered[1] - clustered[0] > plain[1] - plain[0]  # correlated rows: wider when resampled as units


def test_auroc_replicates_centre_on_the_auroc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    pos, neg = rng.normal(1, 1, 60).round(1), rng.normal(0, 1, 50).round(1)  # rounded: ties count one half
    reps = auroc_replicates(pos, neg, n_boot=2000, seed=0)
    auc = roc_auc_score([1] * 60 + [0] * 50, np.r_[pos, neg])
    assert np.mean(reps) == pytest.approx(auc, abs=0.01)
    lo, hi = percentile_interval(reps)
    assert lo < auc < hi
    assert auroc_replicates([0.9], [0.1, 0.2]).tolist() == [1.0] * 1000
    assert auroc_replicates([], [0.1]) is None


def test_average_interval_from_independent_parts():
    values = [0.5] * 8
    intervals = [[0.5 - 1.96 * 0.04, 0.5 + 1.96 * 0.04]] * 8  # se 0.04 each
    lo, hi = average_interval(values, intervals)
    assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(8 * 0.04**2) / 8)
    assert (lo + hi) / 2 == pytest.approx(0.5)
    assert average_interval(values, [*intervals[:7], None]) is None


def _record(subset: str, acc: float, interval: list[float] | None) -> dict:
    return {
        "model": {"spec": "m", "family": "openclip"},
        "task": {"name": f"covar/{subset}", "version": "1", "n_samples": 10, "headline": "acc1"},
        "metrics": {"acc1": acc},
        "intervals": {} if interval is None else {"acc1": interval},
    }


def test_leaderboard_average_interval_in_csv_json_and_caption():
    records = [_record(s, 0.5 + 0.01 * i, [0.4 + 0.01 * i, 0.6 + 0.01 * i]) for i, s in enumerate(COVAR_SUBSETS)]
    (avg,) = lb.average_records(records)
    assert avg["metric"] == "acc1_avg" and avg["task"] == "covar"
    assert avg["value"] == pytest.approx(np.mean([0.5 + 0.01 * i for i in range(8)]))
    half = 1.96 * math.sqrt(8 * (0.1 / 1.96) ** 2) / 8
    assert avg["interval"] == pytest.approx([avg["value"] - half, avg["value"] + half])
    rows = list(csv.DictReader(io.StringIO(render.render_csv(records))))
    got = {r["metric"]: float(r["value"]) for r in rows if r["task"] == "covar"}
    assert got == pytest.approx({"acc1_avg": avg["value"], "acc1_avg_ci_low": avg["interval"][0],
                                 "acc1_avg_ci_high": avg["interval"][1]})  # fmt: skip
    tables = lb.build_tables(records)
    data = json.loads(render.render_json(records, tables))
    (jrow,) = [r for r in data["results"] if r["metric"] == "acc1_avg"]
    assert jrow["interval"] == pytest.approx(avg["interval"])
    caption = tables[0].caption or ""
    assert "acc1_avg" in caption and "independent" in caption
    assert f"[{100 * avg['interval'][0]:.1f}, {100 * avg['interval'][1]:.1f}]" in caption
    # the average itself (table cell) is unchanged: a plain number
    assert tables[0].rows[0][-1] == round(100 * avg["value"], 1)


def test_no_average_row_without_every_subset_or_interval():
    partial = [_record(s, 0.5, [0.4, 0.6]) for s in COVAR_SUBSETS[:7]]
    assert lb.average_records(partial) == []
    no_ci = [_record(s, 0.5, None) for s in COVAR_SUBSETS]
    (row,) = lb.average_records(no_ci)
    assert row["interval"] is None and "acc1_avg" not in (lb.build_tables(no_ci)[0].caption or "")


def test_evaluator_stores_the_class_balanced_interval(tmp_path, covar_shapes_data):
    r = cli(
        "run",
        "--models",
        "demo/shapes-clean",
        "--tasks",
        "covar-shapes/scale",
        "--data-dir",
        str(covar_shapes_data),
        "--output-dir",
        str(tmp_path),
        "--limit",
        "24",
        "--workers",
        "0",
        "--attribution",
        "none",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from covar_harness.results import files as results

    record = json.loads(results.result_path(tmp_path, "demo/shapes-clean", "covar-shapes/scale").read_text())
    lo, hi = record["intervals"]["mean_per_class_recall"]
    assert lo <= record["metrics"]["mean_per_class_recall"] <= hi
    assert record["intervals"]["acc1"][0] <= record["metrics"]["acc1"] <= record["intervals"]["acc1"][1]
