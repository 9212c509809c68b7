"""Redundant evidence made visible (issue 23 item 6): a planted reader of 4 of 16 patches through a max, so any one
read patch carries the evidence alone (``toy_vit.RedundantReader``). Leave-one-cluster-out CCI sees it only when
K puts the four read patches in one cluster: at K = 2 it does, at K = 7 each read patch is a cluster of its own and
removing it costs almost nothing. The per-sample ``additive_share`` (single-cluster drops over the drops of
removing each region whole, from the region test already in the removal call) says so, and the summary warns.

Measured here (24 images): median additive share 0.003 at K = 7, 1.000 at K = 2; the warning threshold
(``REDUNDANCY_WARN_BELOW`` = 0.5, "most of the drop is missing") sits between them. The demo models' full runs
measure 0.90-1.06 (README), far from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covar_harness.catalog import plugin_manager
from covar_harness.cli.main import main
from covar_harness.diagnosis.summary import REDUNDANCY_WARN_BELOW
from covar_harness.leaderboard import tables as lb
from helpers import patch_everywhere
from result_records import valid_record
from toy_vit import ToyPlugin, painted, task_yaml, write_sourced

READ = {(0, 0): (255, 204, 204), (0, 1): (204, 255, 204), (1, 0): (204, 204, 255), (1, 1): (255, 255, 204)}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    base = tmp_path_factory.mktemp("redundant")
    images = {f"img{j:02d}": (painted(4, READ, seed=j), set(READ), 4) for j in range(24)}
    return task_yaml(base / "tasks" / "redundant.yaml", "toy/redundant", write_sourced(base / "data", images))


def _run(tmp_path, task, k: int) -> tuple[dict, list[dict]]:
    original = plugin_manager.load_catalog
    mp = pytest.MonkeyPatch()
    patch_everywhere(mp, plugin_manager, "load_catalog", lambda p=(), a=None, e=(): original(p, a, [*e, ToyPlugin()]))
    out = tmp_path / f"k{k}"
    try:
        args = ["run", "--models", "toy-redundant", "--tasks", str(task), "--output-dir", str(out), "--workers", "0"]
        assert main([*args, "--attribution", "cci", "--cci-k", str(k), "--log-samples"]) == 0
    finally:
        mp.undo()
    path = next(out.rglob("toy__redundant.json"))
    rows = [json.loads(x) for x in path.with_name(path.stem + ".samples.jsonl").read_text().splitlines()]
    return json.loads(path.read_text()), rows


def test_redundant_evidence_shows_at_k7_and_not_at_k2(tmp_path, task):
    coarse, coarse_rows = _run(tmp_path, task, 2)
    fine, fine_rows = _run(tmp_path, task, 7)
    shares = {
        k: np.array([r["counterfactual"]["additive_share"] for r in rows])
        for k, rows in ((2, coarse_rows), (7, fine_rows))
    }
    assert len(shares[2]) == len(shares[7]) == 24  # per sample, in the log's region-test entry
    # K = 2: the four read patches share a cluster, whose removal is the whole drop
    assert np.all(np.abs(shares[2] - 1.0) < 0.01)
    assert coarse["metrics"]["additive_share"] == pytest.approx(1.0, abs=0.01)
    assert "warning" not in coarse["config"]["diagnosis"]["redundancy"]
    # K = 7: each read patch alone; removing one leaves the others, so the single drops explain almost nothing
    assert np.all(shares[7] < 0.05) and fine["metrics"]["additive_share"] < 0.05
    redundancy = fine["config"]["diagnosis"]["redundancy"]
    assert redundancy["n"] == 24 and redundancy["share_below_half"] == 1.0
    assert fine["metrics"]["additive_share"] < REDUNDANCY_WARN_BELOW <= coarse["metrics"]["additive_share"]
    assert redundancy["warning"].startswith("redundant evidence") and redundancy["warning"] in fine["notes"]
    # why the warning matters: the rule still decides every error, on the sliver of the drop CCI still sees
    assert fine["config"]["diagnosis"]["by_rule"]["area"]["n_errors_undetermined"] == 0
    top = [max(r["cci"]["importance"]) for r in fine_rows]
    assert max(top) < 0.05 and min(max(r["cci"]["importance"]) for r in coarse_rows) > 0.5


def test_the_leaderboard_caption_names_the_redundant_pairs():
    rec = valid_record(model="demo/shapes-shortcut", task="covar-shapes/bg_varied")
    rec["metrics"].update({"fg_driven_rate": 0.5, "bg_er": 0.9, "fine_er": 0.0, "additive_share": 0.2})
    rec["config"]["diagnosis"] = {
        "rules": ["area"],
        "by_rule": {"area": {}},
        "redundancy": {"median": 0.2, "warning": "x"},
    }
    diag = next(t for t in lb.build_tables([rec]) if "diagnosis" in t.title)
    assert "Redundant evidence" in diag.caption and "demo/shapes-shortcut on Bg-varied (20%)" in diag.caption
    del rec["config"]["diagnosis"]["redundancy"]["warning"]
    assert not (next(t for t in lb.build_tables([rec]) if "diagnosis" in t.title).caption or "").count("Redundant")
