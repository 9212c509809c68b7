"""The leaderboard's background-reliance table (issue 18 item 3) from fabricated result records: each
benchmark's own measure with its n, columns only where results exist, no table without a peer benchmark."""

from __future__ import annotations

import json

import pytest

from covar_harness.leaderboard.peer_tables import background_reliance_tables
from covar_harness.leaderboard.render import render_json, render_markdown
from covar_harness.leaderboard.tables import build_tables

TITLE = "background reliance: each benchmark's measure side by side"


def rec(model: str, task: str, n: int, config: dict | None = None, **metrics: float) -> dict:
    headline = "mean_per_class_recall" if task.startswith("counteranimals") else "acc1"
    return {
        "model": {"spec": model, "name": model, "family": "test"},
        "task": {"name": task, "version": 1, "n_samples": n, "headline": headline, "tags": []},
        "metrics": {"acc1": metrics.pop("acc1", 0.5), **metrics},
        "config": config or {},
    }


def diagnosed(n_errors: int) -> dict:
    return {"diagnosis": {"rules": ["area"], "by_rule": {"area": {"n_errors": n_errors}}}}


def everything() -> list[dict]:
    return [
        rec("m1", "covar/original", 100, acc1=0.80),
        rec("m1", "covar/bg_varied", 90, diagnosed(40), acc1=0.55, bg_er=0.30, bg_sufficient_rate=0.12),
        rec("m1", "counteranimals/common", 60, mean_per_class_recall=0.70),
        rec("m1", "counteranimals/counter", 50, mean_per_class_recall=0.52),
        rec("m1", "imagenet9/mixed_same", 450, acc1=0.90),
        rec("m1", "imagenet9/mixed_rand", 450, acc1=0.75),
        rec("m1", "waterbirds/test", 5794, acc1=0.85, worst_group_acc=0.60, group_acc_gap=0.25),
        rec("m2", "waterbirds/test", 5794, acc1=0.80, worst_group_acc=0.70, group_acc_gap=0.10),
    ]


def test_every_measure_with_its_n_by_hand():
    tables = build_tables(everything())
    (table,) = [t for t in tables if t.title == TITLE]
    assert table.columns == [
        "Model",
        "COVAR bg_varied drop",
        "COVAR bg_varied drop n",
        "COVAR BG-Er (area, harness rule)",  # the rule named, as in every diagnosis table
        "COVAR BG-Er (area, harness rule) n",
        "COVAR bg-sufficient (counterfactual)",
        "COVAR bg-sufficient (counterfactual) n",
        "CounterAnimals drop",
        "CounterAnimals drop n",
        "ImageNet-9 BG-Gap",
        "ImageNet-9 BG-Gap n",
        "Waterbirds worst-group gap",
        "Waterbirds worst-group gap n",
    ]
    m1, m2 = table.rows
    # 80-55, BG-Er 30 of 40 diagnosed errors, counterfactual truth 12, 70-52 (class-balanced), 90-75, 85-60
    assert m1 == ["m1", 25.0, 90, 30.0, 40, 12.0, 40, 18.0, 50, 15.0, 450, 25.0, 5794]
    assert m2 == ["m2", None, None, None, None, None, None, None, None, None, None, 10.0, 5794]
    assert "n = images of the shifted set" in (table.caption or "")
    assert tables[-1] is table  # after the per-family tables


def test_columns_only_where_results_exist():
    records = [r for r in everything() if r["task"]["name"].startswith(("imagenet9", "covar-shapes"))]
    records += [rec("m3", "covar-shapes/original", 40, acc1=0.9), rec("m3", "covar-shapes/bg_varied", 40, acc1=0.6)]
    (table,) = background_reliance_tables(records)
    assert table.columns == ["Model", "COVAR-Shapes bg_varied drop", "COVAR-Shapes bg_varied drop n"] + [
        "ImageNet-9 BG-Gap",
        "ImageNet-9 BG-Gap n",
    ]
    assert table.rows == [["m1", None, None, 15.0, 450], ["m3", pytest.approx(30.0), 40, None, None]]
    assert "background reliance" in render_markdown([table])
    assert json.loads(render_json(records, [table]))


def test_absent_without_peer_results():
    covar_only = [r for r in everything() if r["task"]["name"].startswith("covar/")]
    assert background_reliance_tables(covar_only) == []
    assert all(t.title != TITLE for t in build_tables(covar_only))
    assert background_reliance_tables([]) == []
    half = [rec("m1", "imagenet9/mixed_same", 450, acc1=0.9)]  # no mixed_rand: no BG-Gap, no table
    assert background_reliance_tables(half) == []
