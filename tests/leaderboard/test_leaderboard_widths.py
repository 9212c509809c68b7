"""Issue 25 (new-user friction): leaderboard tables wrapped and broke at 80 and 120 columns. They now fit the
terminal: folded into pieces that repeat the model column, or, when one value column cannot sit beside a long
model name, printed in long format. Every number of the wide table is still shown."""

from __future__ import annotations

import io

import pytest
from rich.cells import cell_len
from rich.console import Console

from covar_harness.data.subsets import ALL_SUBSETS
from covar_harness.leaderboard import render as renderers
from covar_harness.leaderboard import tables as lb


def record(model: str, task: str, acc1: float) -> dict:
    return {
        "schema_version": 1,
        "model": {"spec": model, "name": model, "family": "openclip", "target": None},
        "task": {"name": task, "version": 1, "n_samples": 100, "n_failed": 0, "n_classes": 10,
                 "data_fingerprint": "x", "headline": "acc1"},
        "metrics": {"acc1": acc1, "acc5": None, "mean_per_class_recall": acc1, "fg_driven_rate": 0.5, "bg_er": 0.25,
                    "fine_er": 0.125},
        "intervals": {},
        "config": {"batch_size": 4, "precision": "fp32", "seed": 0, "limit": None, "templates": ["{}"]},
        "provenance": {},
    }  # fmt: skip


def wide_records(model_names: list[str]) -> list[dict]:
    """Every COVAR subset for each model: the widest table the leaderboard prints (a column per subset)."""
    return [
        record(m, f"covar/{s}", round(0.4 + 0.01 * (i + 3 * k), 3))
        for k, m in enumerate(model_names)
        for i, s in enumerate(ALL_SUBSETS)
    ]


def render(records: list[dict], width: int) -> str:
    buf = io.StringIO()
    renderers.render_rich(lb.build_tables(records, None), Console(file=buf, width=width, color_system=None))
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize(
    "models",
    [
        ["openclip:ViT-B-32/laion2b_s34b_b79k", "demo/shapes-clean"],
        ["openclip:local-dir:/home/someone/checkpoints/a-rather-long-folder-name/ViT-L-14-finetuned-v2"],
    ],
)
def test_every_line_fits_and_every_number_is_shown(width, models):
    records = wide_records(models)
    text = render(records, width)
    too_wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not too_wide, "\n".join(too_wide)
    for rec in records:
        assert f"{100 * rec['metrics']['acc1']:.1f}" in text
    for model in models:  # whole, or folded over lines in the long format (never cut with an ellipsis)
        assert model in text or (model[:40] in text and model[-30:] in text), model
    assert "…" not in text


def test_a_table_that_fits_is_printed_as_before():
    records = wide_records(["m"])[:2]
    text = render(records, 200)
    assert "(1/" not in text and "long format" not in text


def test_a_wide_table_is_folded_with_the_model_column_repeated():
    models = ["openclip:ViT-B-32/laion2b_s34b_b79k", "demo/shapes-clean"]
    text = render(wide_records(models), 80)
    assert "(1/" in text and "(2/" in text
    assert text.count("demo/shapes-clean") >= 2  # each piece repeats the model column
