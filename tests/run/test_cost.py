"""The cost of every number (issue 26): each result's provenance.cost holds the wall time per phase, forward passes
per image per phase, peak memory and the device; the leaderboard shows a cost table."""

import json
import time

from covar_harness.common.cost import Cost, ForwardMeter
from covar_harness.models.adapter import implements
from helpers import make_covar
from helpers import run_cli_inprocess as cli


def test_phases_are_exclusive_and_nested_time_counts_once():
    cost = Cost()
    with cost.phase("attribution"):
        time.sleep(0.02)
        with cost.phase("masks"):
            time.sleep(0.03)
            cost.count(4)
        cost.count(6)
    assert 0.025 <= cost.seconds["masks"] < 0.2
    assert 0.015 <= cost.seconds["attribution"] < 0.045  # the nested 0.03 s is not in it
    assert cost.rows == {"masks": 4, "attribution": 6}
    record = cost.record(2, "cpu")
    assert record["phases"]["attribution"]["forward_passes_per_image"] == 3.0
    assert record["device"] == "cpu" and record["peak_memory_mb"]["cpu_rss_process"] > 0


class _Adapter:
    def encode_images(self, pixels):
        return pixels

    def encode_images_without(self, pixels, drop):
        return drop


class _Shape:
    def __init__(self, *shape):
        self.shape = shape


def test_meter_counts_pattern_rows_and_leaves_missing_members_missing():
    adapter = _Adapter()
    meter = ForwardMeter(adapter, implements)
    meter.cost = cost = Cost()
    with cost.phase("zero-shot"):
        adapter.encode_images(_Shape(8, 3, 4, 4))
    with cost.phase("attribution"):
        adapter.encode_images_without(_Shape(8, 3, 4, 4), _Shape(8, 5, 16))  # (B, K, N) patterns: B*K rows
    assert cost.rows == {"zero-shot": 8, "attribution": 40}
    assert not hasattr(adapter, "patch_tokens") and meter.uncounted == []


def test_every_result_records_its_phases_and_the_leaderboard_shows_the_cost(openclip_dir, tmp_path):
    data = tmp_path / "data"
    make_covar(data / "covar", subsets=("original",), per_class=2)
    out = tmp_path / "out"
    r = cli(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        "covar/original",
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--cci-k",
        "3",
    )
    assert r.returncode == 0, r.stderr
    cost = json.loads(next(out.rglob("*.json")).read_text())["provenance"]["cost"]
    phases = cost["phases"]
    assert {"load", "data", "zero-shot", "masks", "attribution", "diagnosis", "write"} <= set(phases)
    assert phases["zero-shot"]["forward_passes_per_image"] >= 1.0
    # every image: K removal rows; masked ones also the two regions of the counterfactual test
    assert 3.0 <= phases["attribution"]["forward_passes_per_image"] <= 5.0
    assert phases["diagnosis"]["forward_passes_per_image"] == 0.0
    assert cost["device"] == "cpu" and cost["n_images"] > 0 and cost["load_shared_by"] == 1
    assert abs(cost["seconds"] - sum(p["seconds"] for p in phases.values())) < 0.01
    md = cli("leaderboard", str(out), "--format", "markdown").stdout
    assert "### cost per model" in md and "attribution s" in md


def test_cost_table_reads_any_cost_a_file_may_hold():
    from covar_harness.leaderboard.cost_table import cost_rows

    def rec(cost):
        return {"model": {"spec": "m"}, "task": {"name": "t"}, "provenance": {"cost": cost}}

    hostile = [
        {"phases": {"load": "x", "data": {"seconds": "1"}, "zero-shot": {"seconds": 2.0}}, "peak_memory_mb": [1]},
        {"phases": {"attribution": {"seconds": 1e308, "forward_passes_per_image": None}}, "n_images": "many"},
        {"phases": []},  # not a dict: the record is left out
        "not a dict",
    ]
    (row,) = cost_rows([rec(c) for c in hostile])
    assert row[0] == "m" and row[2] == 2  # two usable cost records
    assert cost_rows([rec(None)]) == []
