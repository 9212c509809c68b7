"""The Python API (issue 18 item 4): ``covar_harness.evaluate`` runs exactly what ``covar-harness run`` runs."""

from __future__ import annotations

import json

import pytest

import covar_harness
from covar_harness.catalog.registry import UsageError
from covar_harness.models import specs
from helpers import patch_everywhere
from helpers import run_cli_inprocess as cli


def test_evaluate_returns_the_records_the_cli_writes(openclip_dir, task_yaml, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = f"openclip:local-dir:{openclip_dir}"
    out = covar_harness.evaluate([spec], [str(task_yaml)], workers=0, log_samples=True)
    assert not (tmp_path / "results").exists()  # no output_dir: nothing written
    (record,) = out["results"]
    assert out["outcomes"][0]["status"] == "done" and len(record["samples"]) == 12
    assert record["metrics"]["acc1"] == sum(s["correct"] for s in record["samples"]) / 12
    r = cli("run", "--models", spec, "--tasks", str(task_yaml), "--output-dir", str(tmp_path / "cli"), "--workers", "0")
    assert r.returncode == 0
    (written,) = (tmp_path / "cli").rglob("*.json")
    on_disk = json.loads(written.read_text())
    assert on_disk["metrics"] == record["metrics"] and on_disk["config"] == record["config"]


def test_evaluate_writes_only_into_output_dir_and_resumes(openclip_dir, task_yaml, tmp_path):
    spec = f"openclip:local-dir:{openclip_dir}"
    first = covar_harness.evaluate(spec, str(task_yaml), output_dir=tmp_path / "o", workers=0, attribution="none")
    assert len(list((tmp_path / "o").rglob("*.json"))) == 1
    again = covar_harness.evaluate(spec, str(task_yaml), output_dir=tmp_path / "o", workers=0, attribution="none")
    assert again["outcomes"][0]["status"] == "skipped" and again["results"] == first["results"]
    with pytest.raises(UsageError, match="precision"):  # the same resume rule as the CLI
        covar_harness.evaluate(
            spec, str(task_yaml), output_dir=tmp_path / "o", workers=0, attribution="none", precision="bf16"
        )


def test_bad_options_fail_before_anything_loads(task_yaml, monkeypatch):
    patch_everywhere(monkeypatch, specs, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(UsageError, match="did you mean 'cci_k'"):
        covar_harness.evaluate("demo", str(task_yaml), cci_kk=3)
    with pytest.raises(UsageError, match="--cci-k 99"):
        covar_harness.evaluate("demo", str(task_yaml), cci_k=99)
    with pytest.raises(UsageError, match="did you mean 'cuda'"):
        covar_harness.evaluate("demo", str(task_yaml), device="cdua")


def test_a_failing_pair_is_an_outcome_not_an_exception(task_yaml, tmp_path):
    out = covar_harness.evaluate(f"openclip:local-dir:{tmp_path / 'nowhere'}", str(task_yaml), workers=0)
    assert out["results"] == [] and out["outcomes"][0]["status"] == "failed"
    assert "nowhere" in out["outcomes"][0]["error"]


def test_load_task_resolves_like_tasks(task_yaml):
    cfg = covar_harness.load_task("covar-shapes/crop")
    assert cfg.task == "covar-shapes/crop" and cfg.dataset["format"] == "covar-shapes"
    assert covar_harness.load_task(str(task_yaml)).task == "toy/shapes"
    with pytest.raises(UsageError, match="names 9 tasks"):
        covar_harness.load_task("covar-shapes/*")
