"""Extending the pipeline in one file each (the CONTRIBUTING examples, proven here): a new attributor is one
``Attributor`` subclass plus one registration; a new diagnosis rule is one function with ``@rule``."""

from __future__ import annotations

import json
import sys

import pytest
from test_pipeline_steps import ToyPlugin, evaluate, with_plugins, write_task

# ---- the CONTRIBUTING example: an attributor in one file -----------------------------------------------------------
from covar_harness.attribution import Attributor, ClusterBatch, Scores
from covar_harness.catalog.hookspecs import hookimpl


class KeepOne(Attributor):
    """A cluster's importance: the similarity of the image reduced to that cluster alone."""

    name = "keep-one"
    description = "similarity of the image with one cluster kept (K removal passes)"
    k_range = (2, 16)

    def patterns(self, batch: ClusterBatch):
        return ~batch.patterns & batch.valid[..., None]  # (B, K, N): drop every patch outside cluster k

    def scores(self, batch: ClusterBatch, without, ran) -> Scores:
        s_alone = (without.to(batch.emb.device) * batch.text[:, None, :]).sum(dim=-1)  # (B, K)
        return Scores(importance=s_alone * batch.valid)


@hookimpl
def register_attributors(register):
    KeepOne.register_with(register)


# ---- the CONTRIBUTING example: a diagnosis rule in one file ---------------------------------------------------------
def peak(evidence, fg):
    """fg-score = how much of the single most important cluster lies on the object."""
    if evidence.assignments is None or evidence.importance is None:
        return None
    top = max(range(len(evidence.importance)), key=lambda k: evidence.importance[k])
    on_top = [f for cluster, f in zip(evidence.assignments, fg) if cluster == top]
    return float(sum(on_top) / len(on_top)) if on_top else None


@pytest.fixture
def peak_rule():
    """``@rule("peak")`` on ``peak`` for one test (a plugin module would decorate it at import)."""
    from covar_harness.diagnosis.rules import RULES, rule

    rule("peak")(peak)
    yield
    RULES.pop("peak")


# ---- the proofs ----------------------------------------------------------------------------------------------------
def test_the_one_file_attributor_registers_with_its_k_range():
    from covar_harness.catalog.plugin_manager import load_catalog

    catalog = load_catalog(allow="", extra_plugins=[sys.modules[__name__]])
    entry = catalog.attributors.entry("keep-one")
    assert entry.extra["k_range"] == (2, 16) and entry.description == KeepOne.description
    assert entry.item(k=3).method == "keep-one"


def test_the_one_file_attributor_runs_from_the_cli_and_is_diagnosed(tmp_path, monkeypatch):
    from covar_harness.cli.main import main
    from covar_harness.results import files as results

    with_plugins(monkeypatch, ToyPlugin(), sys.modules[__name__])
    task, out = write_task(tmp_path), tmp_path / "results"
    args = [
        "run",
        "--models",
        "toy-patch-sum",
        "--tasks",
        str(task),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--attribution",
        "keep-one",
        "--log-samples",
        "--segmenter",
        "dataset",
        "--overwrite",
    ]
    assert main([*args, "--cci-k", "2"]) == 0
    path = results.result_path(out, "toy-patch-sum", "toy/pipeline")
    rows = [json.loads(line) for line in results.samples_path(path).read_text().splitlines()]
    assert {r["cci"]["method"] for r in rows} == {"keep-one"}
    # the decisive cluster alone carries the decision: the object for correct ones, the background for errors
    assert [r["driver"] for r in rows] == ["fg" if r["correct"] else "bg" for r in rows]
    assert results.load(path)["config"]["attribution"]["method"] == "keep-one"
    assert main([*args, "--cci-k", "17"]) == 2  # outside the 2..16 it declares


def test_the_one_file_rule_is_a_driver_rule(tmp_path, peak_rule):
    from covar_harness.attribution import AttributionStep

    record = evaluate(tmp_path, [AttributionStep("cci", k=2)], rules=("peak", "paper"))
    rows = record["samples"]
    assert [r["drivers"]["peak"] for r in rows] == ["fg" if r["correct"] else "bg" for r in rows]
    assert record["config"]["diagnosis"]["rules"] == ["peak", "paper"] and record["metrics"]["bg_er"] == 1.0
