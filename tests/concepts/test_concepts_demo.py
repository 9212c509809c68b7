"""Concept naming where the truth is known (issue 27): the shortcut demo model learned "class i lives on
background family i", so on ``bg_varied`` its background-driven errors must name the family planted for the
*predicted* class, far above the null with the named concepts permuted across errors; the clean model learned the
shapes, so its (few) errors' named backgrounds must not follow the predicted class. The bank is the shipped
``covar-shapes-backgrounds``: the families rendered alone, drawn with other seeds than the benchmark's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from covar_harness.results import files as results
from covar_harness_tasks.covar_shapes_bank import NAME, known_truth
from helpers import run_cli_inprocess as cli

CLEAN, SHORTCUT = "demo/shapes-clean", "demo/shapes-shortcut"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, covar_shapes_data) -> Path:
    out = tmp_path_factory.mktemp("concepts") / "out"
    r = cli(
        "run",
        "--models",
        "demo",
        "--tasks",
        "covar-shapes/bg_varied",
        "--data-dir",
        str(covar_shapes_data),
        "--output-dir",
        str(out),
        "--log-samples",
        "--workers",
        "0",
        "--batch-size",
        "120",
        "--concepts",
        NAME,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def _truth(run_dir: Path, model: str, covar_shapes_data: Path, errors: str) -> tuple[dict, dict]:
    path = results.result_path(run_dir, model, "covar-shapes/bg_varied")
    rows = [json.loads(x) for x in results.samples_path(path).read_text().splitlines()]
    classes = json.loads((covar_shapes_data / "covar-shapes" / "classes.json").read_text())
    return known_truth(rows, classes, errors=errors), json.loads(path.read_text())["config"]["concepts"]


def test_shortcut_errors_name_the_background_planted_for_the_predicted_class(run_dir, covar_shapes_data):
    truth, concepts = _truth(run_dir, SHORTCUT, covar_shapes_data, "bg")
    assert truth["n"] >= 150  # measured: 197 of the 239 errors are background-driven and named
    assert truth["share"] >= 0.8 and truth["null_mean"] <= 0.2 and truth["p_value"] < 0.01  # measured 0.94 vs 0.11
    assert concepts["class_association"]["agreement"] >= concepts["class_association"]["null_95"] + 0.4
    assert concepts["bank"]["name"] == NAME and concepts["temperature_from"] == "the model's logit scale"


def test_clean_model_errors_do_not_follow_the_predicted_class(run_dir, covar_shapes_data):
    truth, concepts = _truth(run_dir, CLEAN, covar_shapes_data, "all")
    short, _ = _truth(run_dir, SHORTCUT, covar_shapes_data, "all")
    assert truth["n_errors"] <= 30 and concepts["n_bg_errors"] <= 5  # it rarely errs, and rarely by background
    assert truth["n"] == 0 or truth["share"] <= short["share"] - 0.4
