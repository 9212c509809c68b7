"""Diagnosis where the truth is known (issue 8): the shortcut demo model was trained to read backgrounds, the
clean one was not. The paper's rule must see it; the density-based `area` rule must see it more clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covar_harness.results import files as results
from helpers import run_cli_inprocess as cli  # the CLI in this process: same exit codes and output, no start-up

CLEAN, SHORTCUT = "demo/shapes-clean", "demo/shapes-shortcut"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, covar_shapes_data) -> Path:
    base = tmp_path_factory.mktemp("truth")
    r = cli(
        "run",
        "--models",
        "demo",
        "--tasks",
        "covar-shapes/original,covar-shapes/bg_varied",
        "--data-dir",
        str(covar_shapes_data),
        "--output-dir",
        str(base / "out"),
        "--limit",
        "100",
        "--log-samples",
        "--driver-rule",
        "paper,area",
        "--workers",
        "0",
        "--batch-size",
        "100",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return base / "out"


def _result(run_dir: Path, model: str, task: str) -> tuple[dict, list[dict]]:
    path = results.result_path(run_dir, model, task)
    rows = [json.loads(x) for x in results.samples_path(path).read_text().splitlines()]
    return json.loads(path.read_text()), rows


def _fg_share_of_correct(rows: list[dict], rule: str) -> float:
    correct = [r for r in rows if r["correct"] and r["drivers"][rule] is not None]
    return sum(r["drivers"][rule] == "fg" for r in correct) / len(correct)


def test_shortcut_errors_on_bg_varied_are_background_driven(run_dir):
    clean, _ = _result(run_dir, CLEAN, "covar-shapes/bg_varied")
    short, _ = _result(run_dir, SHORTCUT, "covar-shapes/bg_varied")
    assert short["metrics"]["bg_er"] >= 0.9
    assert short["metrics"]["bg_er"] >= (clean["metrics"]["bg_er"] or 0.0) + 0.5
    assert short["config"]["diagnosis"]["segmenter"]["name"] == "dataset"


def test_correct_decisions_split_by_driver_as_trained(run_dir):
    _, clean = _result(run_dir, CLEAN, "covar-shapes/original")
    _, short = _result(run_dir, SHORTCUT, "covar-shapes/original")
    # paper rule (measured: clean 0.52, shortcut 0.10): right direction, weak for the clean model
    assert _fg_share_of_correct(short, "paper") <= 0.3
    assert _fg_share_of_correct(clean, "paper") >= _fg_share_of_correct(short, "paper") + 0.3
    # area rule (measured: clean 0.94, shortcut 0.25): the clean model is clearly foreground-driven
    assert _fg_share_of_correct(clean, "area") >= 0.8
    assert _fg_share_of_correct(short, "area") <= 0.5
