"""Sample log version 3 (issue 26 item 4): the errors' lines no longer carry ``fine_by_rule``; the result holds each
fine rule's fine (label, pred) pairs (``config.diagnosis.fine_rules[rule].fine_pairs``). A log of version 2 must
still rescore to the very numbers, and into the very files, a version-3 log gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import covar_harness
from covar_harness.diagnosis.fine_rules import pairs_text, read_pairs
from covar_harness.results import files
from helpers import run_cli_inprocess as cli


@pytest.fixture(scope="module")
def v3_result(tmp_path_factory, covar_shapes_data) -> Path:
    out = tmp_path_factory.mktemp("v3")
    args = ["run", "--models", "demo/shapes-shortcut", "--tasks", "covar-shapes/bg_varied", "--output-dir", str(out)]
    args += ["--log-samples", "--workers", "0", "--limit", "60", "--cci-k", "3", "--data-dir", str(covar_shapes_data)]
    r = cli(*args, "--driver-rule", "area,paper")
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.rglob("*.json"))


def _as_version_2(result: Path, folder: Path) -> Path:
    """``result`` and its log as version 2 wrote them: each error's ``fine_by_rule`` (every logged rule, in the
    result's order) after its ``error_type``, no ``fine_pairs`` in the result."""
    obj = json.loads(result.read_text())
    rules = obj["config"]["diagnosis"]["fine_rules"]
    pairs = {spec: read_pairs(record.pop("fine_pairs")) for spec, record in rules.items()}
    obj["config"]["sample_log_version"] = 2
    rows = []
    for line in files.samples_path(result).read_text().splitlines():
        row, out = json.loads(line), {}
        for key, value in row.items():
            out[key] = value
            if key == "error_type":
                out["fine_by_rule"] = {s: (row["label"], row["pred"]) in p for s, p in pairs.items()}
        rows.append(out)
    target = folder / "model" / result.name
    target.parent.mkdir(parents=True)
    files.write_jsonl(files.samples_path(target), rows)
    files.write_json(target, obj)
    return target


def test_the_run_writes_version_3_fine_pairs_and_no_fine_by_rule(v3_result):
    obj = json.loads(v3_result.read_text())
    assert obj["config"]["sample_log_version"] == files.SAMPLE_LOG_VERSION == 3
    rules = obj["config"]["diagnosis"]["fine_rules"]
    assert any(r["fine_pairs"] for r in rules.values())  # the demo has fine-grained errors: the test bites
    assert "fine_pairs" not in obj["config"]["diagnosis"]["fine"]
    rows = [json.loads(x) for x in files.samples_path(v3_result).read_text().splitlines()]
    assert not any("fine_by_rule" in r for r in rows) and any("error_type" in r for r in rows)
    for record in rules.values():  # every listed pair is an error of this result
        assert read_pairs(record["fine_pairs"]) <= {(r["label"], r["pred"]) for r in rows if "error_type" in r}


@pytest.mark.parametrize(
    "settings",
    [{}, {"fine_rule": "text-neighbours:3"}, {"driver_rule": "paper,area", "null_draws": 7}, {"cci_target": "label"}],
)
def test_a_version_2_log_rescores_to_the_same_result_and_log_as_version_3(v3_result, tmp_path, settings):
    old = _as_version_2(v3_result, tmp_path / "v2")
    assert "fine_by_rule" in files.samples_path(old).read_text()
    from_v2 = covar_harness.rescore(old, out=tmp_path / "a", **settings)[0]
    from_v3 = covar_harness.rescore(v3_result, out=tmp_path / "b", **settings)[0]
    for key in ("metrics", "intervals"):
        assert json.dumps(from_v2[key]) == json.dumps(from_v3[key]), key
    assert json.dumps(from_v2["config"]["diagnosis"]) == json.dumps(from_v3["config"]["diagnosis"])
    assert from_v2["config"]["sample_log_version"] == 3
    fine = from_v2["config"]["diagnosis"]["fine_sensitivity"]
    assert any(v for v in fine.values())  # Fine-Er under some rule is not 0: a lost fine relation would show
    logs = [files.samples_path(next((tmp_path / d).rglob("*.json"))).read_bytes() for d in ("a", "b")]
    assert logs[0] == logs[1] and b"fine_by_rule" not in logs[0]


def test_a_version_2_log_rescored_with_its_own_settings_gives_the_runs_numbers(v3_result, tmp_path):
    """Version 2 wrote ``fine_by_rule`` for errors only: correct rows read as never fine, as the run had them."""
    old = _as_version_2(v3_result, tmp_path / "v2")
    same = covar_harness.rescore(old)[0]
    assert same["metrics"] == json.loads(v3_result.read_text())["metrics"]


def test_fine_pairs_text_round_trips_and_refuses_what_is_not_a_pair(tmp_path, v3_result):
    pairs = {(3, 5), (0, 12), (3, 1)}
    assert pairs_text(pairs) == "0:12 3:1 3:5" and read_pairs(pairs_text(pairs)) == pairs
    assert read_pairs("") == frozenset() and pairs_text([]) == ""
    for bad in ("3:5 x", "3-5", "3:", ":5", "3:5  4:6", "-1:2", "\u00b2:1", 7):
        with pytest.raises(ValueError, match="fine_pairs"):
            read_pairs(bad)
    obj = json.loads(v3_result.read_text())
    next(iter(obj["config"]["diagnosis"]["fine_rules"].values()))["fine_pairs"] = "1:2 oops"
    broken = tmp_path / "m" / v3_result.name
    broken.parent.mkdir()
    broken.write_text(json.dumps(obj))
    files.samples_path(broken).write_bytes(files.samples_path(v3_result).read_bytes())
    r = cli("rescore", str(broken), "--out", str(tmp_path / "re"))
    assert r.returncode != 0 and "fine_pairs" in r.stderr and "oops" in r.stderr and "Traceback" not in r.stderr
