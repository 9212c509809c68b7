"""Leaderboard layouts per task family: the COVAR table (8-subset average) and the CounterAnimals columns."""

from __future__ import annotations

from covar_harness.data.subsets import COVAR_SUBSETS
from covar_harness.leaderboard import render
from covar_harness.leaderboard import tables as lb


def _rec(model: str, task: str, acc1: float, balanced: float | None = None, headline: str = "acc1") -> dict:
    return {
        "model": {"spec": model, "name": model, "family": ""},
        "task": {"name": task, "version": 1, "n_samples": 10, "n_classes": 1000, "headline": headline},
        "metrics": {"acc1": acc1, "acc5": None, "mean_per_class_recall": balanced if balanced is not None else acc1},
    }


def _ca(model: str, group: str, balanced: float, acc1: float) -> dict:
    return _rec(model, f"counteranimals/{group}", acc1, balanced, headline="mean_per_class_recall")


def _table(tables: list[lb.Table], needle: str) -> lb.Table:
    return next(t for t in tables if needle in t.title)


def test_counteranimals_common_counter_drop_per_variant():
    records = [
        _ca("m1", "common", 0.80, 0.70),
        _ca("m1", "counter", 0.55, 0.60),
        _ca("m2", "common", 0.5, 0.5),
        _ca("m1", "common-ensemble", 0.82, 0.72),
        _ca("m1", "counter-ensemble", 0.60, 0.61),
        _rec("m1", "counteranimals/custom", 0.3),
    ]
    tables = lb.build_tables(records)
    official = _table(tables, "official protocol")
    assert official.rows[0] == ["m1", 80.0, 55.0, 25.0, 70.0, 60.0]
    assert official.rows[1] == ["m2", 50.0, None, None, 50.0, None]  # no counter run: no drop
    assert _table(tables, "ensemble").rows == [["m1", 82.0, 60.0, 22.0, 72.0, 61.0]]
    assert not any("45-way" in t.title for t in tables)  # variants appear only when run
    assert _table(tables, "headline metric").rows == [["m1", 30.0]]  # unknown tasks are not dropped
    assert not official.published


def test_counteranimals_paper_reference_rows_are_marked():
    tables = lb.build_tables([_ca("m1", "common-45way", 0.9, 0.9)], reference="paper")
    official = _table(tables, "official protocol")
    assert official.rows and official.published == set(range(len(official.rows)))
    by_name = {r[0]: r for r in official.rows}
    assert by_name["ViT-L/14 OpenAI (CounterAnimals paper, published)"][1:4] == [85.38, 70.28, 15.1]
    assert len(by_name) == 11
    md = render.render_markdown(tables)
    assert "| _ViT-H/14 LAION-2B (CounterAnimals paper, published)_ | 85.7 | 73.1 | 12.6 | - | - |" in md
    assert "45-way restriction (UNOFFICIAL)" in md


def test_covar_average_is_over_the_eight_subsets():
    subsets = COVAR_SUBSETS
    records = [_rec("m", f"covar/{s}", 0.1 * (i + 1)) for i, s in enumerate(subsets)] + [
        _rec("m", "covar/original", 0.99)
    ]
    acc = _table(lb.build_tables(records), "covar: zero-shot accuracy")
    assert acc.columns[1] == "Original" and acc.columns[-1] == "Avg"
    assert acc.rows[0][-1] == round(100 * sum(0.1 * (i + 1) for i in range(8)) / 8, 1)  # 45.0, original excluded
    partial = _table(lb.build_tables(records[:3]), "covar: zero-shot accuracy")
    assert partial.rows[0][-1] == "20.0*" and "average over the subsets present" in partial.title
