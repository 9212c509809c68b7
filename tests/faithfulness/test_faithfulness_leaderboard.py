"""Faithfulness results in the leaderboard (issue 15): real ``faithfulness`` runs on the demo models at a small
--limit, then ``leaderboard`` in every format, ``validate``, the HTML report; the per-sample curves of
``--log-samples`` and the all-methods plot. The numbers in the table are checked against the result files
themselves (means, intervals, the paired differences from the random baselines), not against the code that builds
the table."""

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
METHODS = ("cci", "occlusion", "rise", "random", "random-patch")
STEPS = 4
COMMON = ("--limit", "3", "--steps", str(STEPS), "--bootstrap", "50", "--device", "cpu", "--batch-size", "4")


@pytest.fixture(scope="module")
def faith(covar_shapes_data, tmp_path_factory):
    """Two demo models x two tasks x cci, occlusion, rise (16 masks) and the random baselines, with --log-samples."""
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


def _diff(entry: dict) -> str:
    lo, hi = entry["interval"]
    return f"{entry['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def test_leaderboard_table_matches_the_files(faith):
    """Per task a values table (a row per method x model) and a paired differences table (a row per method x
    model x baseline); every value, interval and difference as the files say."""
    proc = run_cli_inprocess("leaderboard", str(faith), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    tables = {t["title"]: t for t in data["tables"]}
    assert set(tables) == {f"faithfulness{kind}: {task}" for task in TASKS for kind in ("", ", paired differences")}
    for task in TASKS:
        table = tables[f"faithfulness: {task}"]
        cols = table["columns"]
        assert cols[:3] == ["Method", "Model", "n"] and "Del. tokens AUC" in cols and "Rank accuracy" in cols
        assert len(table["rows"]) == len(MODELS) * len(METHODS)
        assert [r[0] for r in table["rows"]][-2:] == ["random", "random-patch"]  # the baselines last per model
        for row in table["rows"]:
            method, model, n = row[:3]
            res = result(faith, model, task, method)
            assert n == res["n_samples"] == 3
            for metric, col in (("deletion_auc", "Del. AUC"), ("insertion_tokens_auc", "Ins. tokens AUC"),
                                ("pointing_energy", "Pointing energy")):  # fmt: skip
                assert row[cols.index(col)] == _fmt(res, metric)
        paired = tables[f"faithfulness, paired differences: {task}"]
        cols = paired["columns"]
        assert cols[:4] == ["Method", "Model", "vs", "n"] and "Δ del tok" in cols
        # every method against both baselines, random against random-patch, random-patch against none
        assert len(paired["rows"]) == len(MODELS) * ((len(METHODS) - 2) * 2 + 1)
        for row in paired["rows"]:
            res = result(faith, row[1], task, row[0])
            for metric, col in (("deletion_auc", "Δ del"), ("relevance_rank_accuracy", "Δ rank")):
                assert row[cols.index(col)] == _diff(res["paired"][row[2]][metric])
    # long rows: the same numbers, with the interval ends and the paired differences
    cci = result(faith, MODELS[0], TASKS[0], "cci")
    rows = {(r["model"], r["task"], r["metric"]): r for r in data["results"]}
    key = (MODELS[0], TASKS[0], "faithfulness/cci/deletion_auc")
    assert rows[key]["value"] == cci["deletion_auc"]
    assert rows[(*key[:2], key[2] + "_ci_low")]["value"] == cci["metrics"]["deletion_auc"]["interval"][0]
    minus = rows[(*key[:2], key[2] + "_minus_random-patch")]
    assert minus["value"] == cci["paired"]["random-patch"]["deletion_auc"]["mean"] and minus["n_samples"] == 3
    high = rows[(*key[:2], key[2] + "_minus_random_ci_high")]["value"]
    assert high == cci["paired"]["random"]["deletion_auc"]["interval"][1]


def test_paired_difference_by_hand():
    """Source-clustered pairing on a fixture: the mean of the per-image differences, images paired by index
    (missing or null values dropped), and an interval of a constant difference that is that constant."""
    from covar_harness.faithfulness.settings import FaithfulnessSettings
    from covar_harness.faithfulness.summary import paired_difference

    a = [{"index": i, "source_id": f"s{i // 2}", "m": v} for i, v in enumerate([0.5, 0.7, 0.2, None, 0.9])]
    b = [{"index": i, "source_id": f"s{i // 2}", "m": v} for i, v in enumerate([0.4, 0.4, 0.1, 0.3])]
    got = paired_difference(a, b, "m", FaithfulnessSettings(bootstrap=200))
    assert got["n"] == 3 and got["mean"] == pytest.approx((0.1 + 0.3 + 0.1) / 3)
    lo, hi = got["interval"]
    assert 0.1 - 1e-9 <= lo <= got["mean"] <= hi <= 0.2 + 1e-9  # source s0 (0.1, 0.3) or s1 (0.1) resampled
    same = paired_difference(a[:3], [{**r, "m": r["m"] - 0.25} for r in a[:3]], "m", FaithfulnessSettings())
    assert same["mean"] == pytest.approx(0.25) and same["interval"] == pytest.approx([0.25, 0.25])
    assert same["p"] == 0.0
    none = paired_difference(a, b, "m", FaithfulnessSettings(bootstrap=0))
    assert none["interval"] is None and none["p"] is None


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
    assert f"{len(MODELS) * len(TASKS) * len(METHODS)} file(s): 20 ok, 0 invalid" in proc.stdout
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
    bad["paired"]["random"]["deletion_auc"]["p"] = 2.0
    bad["paired"]["random"]["no_such_metric"] = {"mean": 0.1, "n": 3}
    errors = validation.validate_any(bad)
    assert any("deletion_auc.interval" in e for e in errors) and any("pointing_energy.mean" in e for e in errors)
    assert any(e.startswith("model:") for e in errors)
    assert "paired.random.deletion_auc.p: must be null or in [0, 1], got 2.0" in errors
    assert any(e.startswith("paired.random.no_such_metric") for e in errors)
    folder = tmp_path / "mixed"
    shutil.copytree(faith, folder)
    (folder / "broken.json").write_text(json.dumps(bad))
    proc = run_cli_inprocess("leaderboard", str(folder), "--format", "markdown")
    assert proc.returncode == 0 and "broken.json" in proc.stderr and "two" not in proc.stdout


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
