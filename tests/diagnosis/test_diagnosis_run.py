"""Diagnosis inside a run: masks -> CCI -> driver / error type per sample -> BG-Er, Fine-Er, second table."""

import json

import pytest

from helpers import make_covar, make_image_folder, write_task_yaml
from helpers import run_cli_inprocess as cli  # the CLI in this process: same exit codes and output, no start-up


def _samples(result_path):
    return [json.loads(x) for x in result_path.with_name(result_path.stem + ".samples.jsonl").read_text().splitlines()]


def test_masked_task_gets_drivers_error_types_and_the_second_table(openclip_dir, tmp_path):
    data = tmp_path / "data"
    make_covar(data / "covar", subsets=("original", "bg_varied", "hflip"), per_class=3)  # masks: even positions
    out = tmp_path / "out"
    r = cli(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        "covar/original,covar/hflip",
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--log-samples",
        "--workers",
        "0",
        "--driver-rule",
        "area,paper",
    )
    assert r.returncode == 0, r.stderr
    path = next(out.rglob("covar__original.json"))
    res = json.loads(path.read_text())
    assert cli("validate", str(path)).returncode == 0
    diag = res["config"]["diagnosis"]
    assert diag["rules"] == ["area", "paper"] and set(diag["by_rule"]) == {"area", "paper"}
    assert diag["segmenter"]["name"] == "dataset"
    rows = _samples(path)
    errors = [x for x in rows if not x["correct"]]
    assert all(x["driver"] in ("fg", "bg", None) and set(x["drivers"]) == {"area", "paper"} for x in rows)
    assert all(x["error_type"] in ("bg", "fine", "other") for x in errors)
    assert all("error_type" not in x for x in rows if x["correct"])
    if errors:  # BG-Er is recomputed from the per-sample log exactly
        assert res["metrics"]["bg_er"] == sum(x["error_type"] == "bg" for x in errors) / len(errors)
        assert res["metrics"]["fine_er"] == sum(x["error_type"] == "fine" for x in errors) / len(errors)
    assert all(
        x["counterfactual"]["outcome"] in ("bg-sufficient", "fg-sufficient", "both", "neither", None) for x in rows
    )
    md = cli("leaderboard", str(out), "--format", "markdown").stdout
    assert "error diagnosis" in md and "H-flip BG-Er" in md
    off = cli(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        "covar/original",
        "--data-dir",
        str(data),
        "--output-dir",
        str(tmp_path / "off"),
        "--log-samples",
        "--workers",
        "0",
        "--no-counterfactual",
    )
    assert off.returncode == 0, off.stderr
    assert not any("counterfactual" in x for x in _samples(next((tmp_path / "off").rglob("covar__original.json"))))


def test_unavailable_segmenter_skips_diagnosis_not_the_pair(openclip_dir, tmp_path):
    task = write_task_yaml(tmp_path / "t.yaml", "toy/nomask", make_image_folder(tmp_path / "imgs", per_class=2))
    out = tmp_path / "out"
    # no masks in the task: auto -> GroundedSAM, whose weights cannot be fetched offline
    r = cli(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        str(task),
        "--attribution",
        "cci",
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--log-samples",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(next(out.rglob("toy__nomask.json")).read_text())
    assert res["config"]["diagnosis"]["status"] == "skipped" and "groundedsam" in res["config"]["diagnosis"]["reason"]
    assert any(n.startswith("diagnosis skipped") for n in res["notes"]) and "bg_er" not in res["metrics"]
    assert all("cci" in x for x in _samples(next(out.rglob("toy__nomask.json"))))
    r = cli(
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        str(task),
        "--attribution",
        "cci",
        "--segmenter",
        "none",
        "--output-dir",
        str(tmp_path / "o2"),
        "--workers",
        "0",
    )
    res = json.loads(next((tmp_path / "o2").rglob("*.json")).read_text())
    assert "diagnosis" not in res["config"] and res["config"]["attribution"]["status"] == "ran"


def test_bad_driver_rule_is_a_usage_error(task_yaml):
    r = cli("run", "--models", "openclip:ViT-B-32", "--tasks", str(task_yaml), "--driver-rule", "paper,vibes")
    assert r.returncode == 2 and "unknown driver rule vibes" in r.stderr


@pytest.mark.parametrize("typo, match", [("aera", "area"), ("papr", "paper"), ("shapely", "shapley")])
def test_a_mistyped_driver_rule_gets_a_close_match(task_yaml, typo, match):
    """Issue 25 (new-user friction): `--driver-rule aera` named the choices but not the one meant."""
    r = cli("run", "--models", "demo/shapes-clean", "--tasks", str(task_yaml), "--driver-rule", typo, "--dry-run")
    assert r.returncode == 2 and f"unknown driver rule {typo} (did you mean {match!r}?)" in r.stderr, r.stderr
