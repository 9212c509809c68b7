"""Rescore (issue 26): a result's metrics, intervals and diagnosis recomputed from its sample log under other
settings, with no model loaded, equal a fresh run with those settings (provenance aside)."""

import json

import pytest

import covar_harness
from covar_harness.catalog.registry import UsageError
from helpers import make_covar
from helpers import run_cli_inprocess as cli

ALL_RULES = "area,paper,shapley,counterfactual"


def _run(out, *extra, models="demo/shapes-shortcut", tasks="covar-shapes/bg_varied", data=None):
    args = ["run", "--models", models, "--tasks", tasks, "--output-dir", str(out), "--log-samples", "--workers", "0"]
    r = cli(*args, *(["--data-dir", str(data)] if data else []), *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.rglob("*.json"))


def _same(rescored: dict, fresh: dict) -> None:
    """Byte-identical metrics, intervals, diagnosis and run settings; provenance and the rescore's own note aside."""
    for key in ("metrics", "intervals"):
        assert json.dumps(rescored[key]) == json.dumps(fresh[key]), key
    for key in ("diagnosis", "run_settings", "groups"):
        assert json.dumps(rescored["config"].get(key)) == json.dumps(fresh["config"].get(key)), key


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory, covar_shapes_data):
    """The shortcut demo model on bg_varied, cluster Shapley and all four rules, once per target (A: pred,
    headline area; B: label, headline counterfactual, another null and fine rule)."""
    base = tmp_path_factory.mktemp("rescore")
    common = ["--limit", "32", "--attribution", "cci-shapley", "--cci-k", "3"]
    a = _run(base / "A", *common, "--driver-rule", ALL_RULES, "--cci-target", "pred", data=covar_shapes_data)
    b = _run(
        base / "B",
        *common,
        "--driver-rule",
        "counterfactual,shapley,paper,area",
        "--cci-target",
        "label",
        "--null-draws",
        "7",
        "--fine-rule",
        "text-neighbours:3",
        data=covar_shapes_data,
    )
    return a, b


def test_rescore_a_into_b_equals_a_fresh_run_with_b_for_every_rule_and_both_targets(demo_pair, tmp_path):
    a, b = demo_pair
    fresh_a, fresh_b = (json.loads(p.read_text()) for p in (a, b))
    assert fresh_b["metrics"]["bg_er"] is not None and fresh_a["metrics"]["bg_er"] is not None
    into_b = covar_harness.rescore(
        a,
        driver_rule="counterfactual,shapley,paper,area",
        cci_target="label",
        null_draws=7,
        fine_rule="text-neighbours:3",
        out=tmp_path / "ab",
    )
    assert len(into_b) == 1
    _same(into_b[0], fresh_b)
    into_a = covar_harness.rescore(b, driver_rule=ALL_RULES, cci_target="pred", null_draws=20, fine_rule="groups")
    _same(into_a[0], fresh_a)
    # every rule's summary (config.diagnosis.by_rule) is in both: area, paper, shapley, counterfactual x pred, label
    assert set(fresh_a["config"]["diagnosis"]["by_rule"]) == set(ALL_RULES.split(","))
    written = json.loads(next((tmp_path / "ab").rglob("*.json")).read_text())
    assert written["config"]["rescored"]["from"] == str(a) and written["metrics"] == fresh_b["metrics"]
    rows = [json.loads(x) for x in next((tmp_path / "ab").rglob("*.samples.jsonl")).read_text().splitlines()]
    fresh_rows = [json.loads(x) for x in b.with_name(b.stem + ".samples.jsonl").read_text().splitlines()]
    assert [r["error_type"] for r in rows if "error_type" in r] == [
        r["error_type"] for r in fresh_rows if "error_type" in r
    ]


def test_rescore_with_the_same_settings_changes_nothing_but_provenance(demo_pair):
    a, _ = demo_pair
    same = covar_harness.rescore(a)[0]
    _same(same, json.loads(a.read_text()))
    assert same["provenance"]["rescored"]["harness_version"] == covar_harness.__version__


@pytest.fixture
def small_result(openclip_dir, tmp_path):
    data = tmp_path / "data"
    make_covar(data / "covar", subsets=("original",), per_class=3)
    return _run(
        tmp_path / "run", "--cci-k", "3", models=f"openclip:local-dir:{openclip_dir}", tasks="covar/original", data=data
    )


def test_bootstrap_changes_intervals_not_values_and_bad_settings_are_usage_errors(small_result, tmp_path):
    fresh = json.loads(small_result.read_text())
    few = covar_harness.rescore(small_result, bootstrap=50)[0]
    assert few["metrics"] == fresh["metrics"] and few["config"]["rescored"]["bootstrap"] == 50
    assert few["intervals"]["acc1"] != fresh["intervals"]["acc1"] or fresh["intervals"]["acc1"][0] == 1.0
    with pytest.raises(UsageError, match="did not log"):
        covar_harness.rescore(small_result, fine_rule="wordnet-cap:7")
    with pytest.raises(UsageError, match="unknown driver rule"):
        covar_harness.rescore(small_result, driver_rule="area,nope")
    r = cli("rescore", str(small_result), "--out", str(small_result.parent.parent))
    assert r.returncode == 2 and "overwrite" in r.stderr


def test_an_old_log_rescores_what_it_can_and_says_what_it_cannot(small_result, tmp_path):
    old = json.loads(small_result.read_text())
    del old["config"]["sample_log_version"]  # a log written before version 2: no patch-grid masks
    log = small_result.with_name(small_result.stem + ".samples.jsonl")
    rows = [{k: v for k, v in json.loads(x).items() if k != "fg"} for x in log.read_text().splitlines()]
    small_result.write_text(json.dumps(old))
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = cli("rescore", str(small_result.parent.parent), "--out", str(tmp_path / "re"), "--bootstrap", "100")
    assert r.returncode == 0, r.stderr
    new = json.loads(next((tmp_path / "re").rglob("*.json")).read_text())
    assert new["metrics"]["acc1"] == old["metrics"]["acc1"] and "bg_er" not in new["metrics"]
    assert new["config"]["diagnosis"]["status"] == "not rescored"
    assert any(item.startswith("bg_er:") for item in new["config"]["rescored"]["not_rescored"])
    assert "not rescored: bg_er" in r.stderr.replace("\n", " ")
    assert cli("validate", str(tmp_path / "re")).returncode == 0


def test_a_result_without_a_sample_log_is_named_and_exits_1(small_result, tmp_path):
    small_result.with_name(small_result.stem + ".samples.jsonl").unlink()
    r = cli("rescore", str(small_result), "--out", str(tmp_path / "re"))
    assert r.returncode == 1 and "--log-samples" in r.stderr
