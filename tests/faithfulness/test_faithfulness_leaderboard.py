"""Faithfulness results in the leaderboard (issue 15): real ``faithfulness`` runs on the demo models at a small
--limit, then ``leaderboard`` in every format, ``validate``, the HTML report; the per-sample curves of
``--log-samples`` and the all-methods plot. The numbers in the table are checked against the result files
themselves (means, intervals, ratio to the random row of the same model and task), not against the code that
builds the table."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest

from covar_harness.leaderboard import tables as lb
from covar_harness.results import validation
from helpers import run_cli_inprocess

MODELS = ("demo/shapes-clean", "demo/shapes-shortcut")
TASKS = ("covar-shapes/original", "covar-shapes/bg_varied")
METHODS = ("cci", "occlusion", "rise", "random")
STEPS = 4
COMMON = ("--limit", "3", "--steps", str(STEPS), "--bootstrap", "50", "--device", "cpu", "--batch-size", "4")


@pytest.fixture(scope="module")
def faith(covar_shapes_data, tmp_path_factory):
    """Two demo models x two tasks x cci, occlusion, rise (16 masks) and random, with --log-samples."""
    out = tmp_path_factory.mktemp("faith") / "out"
    proc = run_cli_inprocess(
        "faithfulness", "--models", ",".join(MODELS), "--tasks", ",".join(TASKS), "--attributors", "cci,occlusion,rise",
        "--rise-masks", "16", "--rise-cell", "3", "--rise-seed", "5", "--log-samples", "--data-dir",
        str(covar_shapes_data), "--output-dir", str(out), *COMMON,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def result(out, model: str, task: str, method: str) -> dict:
    from covar_harness.faithfulness.summary import result_file

    return json.loads(result_file(out, model, task, method).read_text())


def test_log_samples_writes_every_sample_curve(faith):
    """Each sample's curves (pixels and tokens) as JSON lines beside the JSON; each AUC is the trapezoid of its own
    curve over the JSON's fractions, and the JSON's mean curve is the mean of the logged ones."""
    from covar_harness.faithfulness.summary import result_file
    from covar_harness.results.files import samples_path

    for method in METHODS:
        res = result(faith, MODELS[0], TASKS[0], method)
        log = samples_path(result_file(faith, MODELS[0], TASKS[0], method))
        assert res["samples_file"] == log.name
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(rows) == res["n_samples"] == 3
        assert [r["id"] for r in rows] == [s["id"] for s in res["samples"]]
        assert all("deletion_curve" not in s for s in res["samples"])  # the JSON keeps AUCs only
        for curve in ("deletion", "insertion", "deletion_tokens", "insertion_tokens"):
            ys = np.array([r[f"{curve}_curve"] for r in rows])
            x = np.array(res["curves"][curve]["x"])
            assert ys.shape == (3, STEPS + 1)
            area = ((ys[:, 1:] + ys[:, :-1]) / 2 * np.diff(x)).sum(axis=1)
            assert np.allclose(area, [r[f"{curve}_auc"] for r in rows])
            assert np.allclose(ys.mean(axis=0), res["curves"][curve]["mean"])


def test_rise_settings_are_recorded(faith):
    res = result(faith, MODELS[1], TASKS[1], "rise")
    assert res["attribution_settings"]["rise"] == {"n_masks": 16, "cell": 3, "p_keep": 0.5, "seed": 5}
    assert "rise" not in result(faith, MODELS[1], TASKS[1], "cci")["attribution_settings"]


def test_all_methods_plot_per_model_and_task(faith):
    from covar_harness.faithfulness.command import methods_plot_name

    for model in MODELS:
        for task in TASKS:
            png = faith / methods_plot_name(model, task)
            assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert (faith / png.name).parent == faith
    assert methods_plot_name(MODELS[0], TASKS[0]) == "curves-demo__shapes-clean-covar-shapes__original.png"
    assert len(methods_plot_name("m" * 150, "t" * 150)) <= 215  # with atomic_write's temp affixes, under 255


def _fmt(res: dict, metric: str) -> str:
    m = res["metrics"][metric]
    lo, hi = m["interval"]
    return f"{m['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def test_leaderboard_table_matches_the_files(faith):
    """One table per task, a row per method x model; every value, interval and ratio as the files say."""
    proc = run_cli_inprocess("leaderboard", str(faith), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    tables = {t["title"]: t for t in data["tables"]}
    assert set(tables) == {f"faithfulness: {task}" for task in TASKS}
    for task in TASKS:
        table = tables[f"faithfulness: {task}"]
        cols = table["columns"]
        assert cols[:3] == ["Method", "Model", "n"] and "Del. tokens AUC" in cols and "Pointing ratio" in cols
        assert len(table["rows"]) == len(MODELS) * len(METHODS)
        for row in table["rows"]:
            method, model, n = row[:3]
            res, rnd = result(faith, model, task, method), result(faith, model, task, "random")
            assert n == res["n_samples"] == 3
            for metric, value_col, ratio_col in (
                ("deletion_auc", "Del. AUC", "Del. ratio"),
                ("insertion_tokens_auc", "Ins. tokens AUC", "Ins. tokens ratio"),
                ("pointing_energy", "Pointing energy", "Pointing ratio"),
            ):
                assert row[cols.index(value_col)] == _fmt(res, metric)
                assert row[cols.index(ratio_col)] == f"{res[metric] / rnd[metric]:.2f}x"
        randoms = [r for r in table["rows"] if r[0] == "random"]
        assert all(r[cols.index("Del. ratio")] == "1.00x" for r in randoms)
    # long rows: the same numbers as fractions, with the interval ends and the ratio
    cci = result(faith, MODELS[0], TASKS[0], "cci")
    rows = {(r["model"], r["task"], r["metric"]): r for r in data["results"]}
    key = (MODELS[0], TASKS[0], "faithfulness/cci/deletion_auc")
    assert rows[key]["value"] == cci["deletion_auc"]
    assert rows[(*key[:2], key[2] + "_ci_low")]["value"] == cci["metrics"]["deletion_auc"]["interval"][0]
    rnd = result(faith, MODELS[0], TASKS[0], "random")
    assert rows[(*key[:2], key[2] + "_vs_random")]["value"] == pytest.approx(cci["deletion_auc"] / rnd["deletion_auc"])


def test_every_format_shows_it(faith):
    table = run_cli_inprocess("leaderboard", str(faith))
    md = run_cli_inprocess("leaderboard", str(faith), "--format", "markdown")
    out = run_cli_inprocess("leaderboard", str(faith), "--format", "csv")
    assert table.returncode == md.returncode == out.returncode == 0
    assert "faithfulness: covar-shapes/bg_varied" in table.stdout and "occlusion" in table.stdout
    assert "### faithfulness: covar-shapes/original" in md.stdout and "| rise | demo/shapes-shortcut | 3 |" in md.stdout
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0]) == lb.LONG_FIELDS  # the classification csv's columns, unchanged
    ins = [r for r in rows if r["metric"] == "faithfulness/occlusion/insertion_auc" and r["task"] == TASKS[1]]
    assert {r["model"] for r in ins} == set(MODELS)
    assert float(ins[0]["value"]) == pytest.approx(
        result(faith, ins[0]["model"], TASKS[1], "occlusion")["insertion_auc"]
    )


def test_validate_accepts_faithfulness_files_and_refuses_broken_ones(faith, tmp_path):
    proc = run_cli_inprocess("validate", str(faith))
    assert proc.returncode == 0, proc.stdout
    assert f"{len(MODELS) * len(TASKS) * len(METHODS)} file(s): 16 ok, 0 invalid" in proc.stdout
    strict = run_cli_inprocess("validate", "--strict", str(faith))
    assert strict.returncode == 1 and "a faithfulness result, not a submission" in strict.stdout
    good = result(faith, MODELS[0], TASKS[0], "cci")
    assert validation.validate_any(good) == []
    assert validation.validate(good) == [
        "schema: covar-harness/faithfulness/1 is a faithfulness result, not a classification result"
    ]  # readers of classification records never take one
    bad = json.loads(json.dumps(good))
    bad["metrics"]["deletion_auc"]["interval"] = [0.9, 0.1]
    bad["metrics"]["pointing_energy"]["mean"] = bad["pointing_energy"] = 1.5
    bad["model"] = "two\nlines"
    errors = validation.validate_any(bad)
    assert any("deletion_auc.interval" in e for e in errors) and any("pointing_energy.mean" in e for e in errors)
    assert any(e.startswith("model:") for e in errors)
    folder = tmp_path / "mixed"
    shutil.copytree(faith, folder)
    (folder / "broken.json").write_text(json.dumps(bad))
    proc = run_cli_inprocess("leaderboard", str(folder), "--format", "markdown")
    assert proc.returncode == 0 and "broken.json" in proc.stderr and "two" not in proc.stdout


def test_ratio_needs_a_random_row_with_the_same_settings(faith):
    loaded = lb.collect(faith)
    changed = [json.loads(json.dumps(r)) for r in loaded.faithfulness]
    for r in changed:
        if r["attributor"] == "random" and r["model"] == MODELS[0]:
            r["settings"]["steps"] = 99  # another protocol: no ratio against it
    tables = {t.title: t for t in lb.build_tables([], None, changed)}
    table = tables[f"faithfulness: {TASKS[0]}"]
    ratio = table.columns.index("Del. ratio")
    for row in table.rows:
        if row[0] != "random":
            assert (row[ratio] is None) == (row[1] == MODELS[0])
    assert "No ratio for demo/shapes-clean" in (table.caption or "")


def test_classification_tables_unchanged_and_report_has_it(faith, covar_shapes_data, tmp_path):
    """A folder with a classification run and faithfulness results: the classification tables and csv rows are
    exactly those of the run alone; the HTML report (built from build_tables) shows the faithfulness table."""
    runs = tmp_path / "runs"
    proc = run_cli_inprocess(
        "run", "--models", MODELS[0], "--tasks", TASKS[0], "--limit", "6", "--data-dir", str(covar_shapes_data),
        "--output-dir", str(runs), "--device", "cpu", "--attribution", "none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    alone = {f: run_cli_inprocess("leaderboard", str(runs), "--format", f).stdout for f in ("markdown", "csv")}
    shutil.copytree(faith, runs / "faith")
    mixed = {f: run_cli_inprocess("leaderboard", str(runs), "--format", f).stdout for f in ("markdown", "csv")}
    assert mixed["markdown"].startswith(alone["markdown"].rstrip("\n"))
    assert "### faithfulness: " in mixed["markdown"] and "### faithfulness: " not in alone["markdown"]
    assert mixed["csv"].startswith(alone["csv"])
    site = tmp_path / "site"
    proc = run_cli_inprocess("report", str(runs), "--out", str(site))
    assert proc.returncode == 0, proc.stderr
    index = (site / "index.html").read_text()
    assert "faithfulness: covar-shapes/original" in index and "Del. tokens AUC" not in index  # header split
    assert "Del. tokens<br>AUC" in index
    assert "faithfulness/cci/deletion_auc" in (site / "leaderboard.csv").read_text()


def test_known_truth_pointing_energy_is_lower_on_the_shortcut_model(tmp_path, covar_shapes_data):
    """Issue 15 item 5: the shortcut demo model reads the background, so every faithful method's attribution
    inside the object (pointing energy) is lower on it than on the clean model, on the same images."""
    out = run_cli_inprocess("faithfulness", "--models", "demo", "--tasks", "covar-shapes/bg_varied",
                            "--limit", "16", "--attributors", "cci,chefer,occlusion",
                            "--output-dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    energy = {}
    for path in tmp_path.rglob("*.json"):
        record = json.loads(path.read_text())
        model = "shortcut" if "shortcut" in str(path.parent.parent) else "clean"
        energy[model, path.stem] = record["metrics"]["pointing_energy"]["mean"]
    for method in ("cci", "chefer", "occlusion"):
        assert energy["shortcut", method] < energy["clean", method], (method, energy)
