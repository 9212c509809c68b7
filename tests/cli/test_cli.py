"""The command line end to end: exit codes, results, resume, dry-run, validate, leaderboard."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import make_image_folder, run_cli_inprocess, write_task_yaml


def test_main_job_writes_valid_result_and_leaderboard_shows_it(openclip_dir, task_yaml, tmp_path):
    out = tmp_path / "results"
    spec = f"openclip:local-dir:{openclip_dir}"
    r = run_cli_inprocess(
        "run", "--models", spec, "--tasks", str(task_yaml), "--output-dir", str(out), "--workers", "0"
    )
    assert r.returncode == 0, r.stderr
    (path,) = list(out.rglob("*.json"))
    result = json.loads(path.read_text())
    assert result["schema_version"] == 1 and result["model"]["spec"] == spec
    assert result["task"]["n_samples"] == 12 and result["task"]["n_classes"] == 3
    assert result["provenance"]["torch"] and result["config"]["templates"] == ["a photo of a {}."]
    assert run_cli_inprocess("validate", str(path)).returncode == 0
    md = run_cli_inprocess("leaderboard", str(out), "--format", "markdown")
    assert md.returncode == 0 and spec in md.stdout
    assert f"{100 * result['metrics']['acc1']:.1f}" in md.stdout
    rows = json.loads(run_cli_inprocess("leaderboard", str(out), "--format", "json").stdout)["results"]
    assert {r["metric"] for r in rows} >= {"acc1", "mean_per_class_recall"}
    csv_out = run_cli_inprocess("leaderboard", str(out), "--format", "csv").stdout.splitlines()
    assert csv_out[0].startswith("model,family,task") and len(csv_out) > 1
    again = run_cli_inprocess(
        "run", "--models", spec, "--tasks", str(task_yaml), "--output-dir", str(out), "--workers", "0"
    )
    assert "skipped" in again.stdout and path.read_text() == json.dumps(result, indent=2)


def test_unknown_names_exit_2_with_close_matches(task_yaml):
    r = run_cli_inprocess(
        "run", "--models", "openclip:ViT-B-32", "--tasks", "toy/shapez", "--include-path", str(task_yaml)
    )
    assert r.returncode == 2 and "unknown task 'toy/shapez'; did you mean 'toy/shapes'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli_inprocess("run", "--models", "opnclip:ViT-B-32", "--tasks", str(task_yaml))
    assert r.returncode == 2 and "unknown model scheme 'opnclip'" in r.stderr
    r = run_cli_inprocess("ls", "modles")
    assert r.returncode == 2


def test_failing_pair_does_not_stop_others(openclip_dir, tmp_path):
    good = write_task_yaml(tmp_path / "good.yaml", "toy/good", make_image_folder(tmp_path / "imgs"))
    out = tmp_path / "out"
    r = run_cli_inprocess(
        "run",
        "--models",
        f"openclip:local-dir:{tmp_path / 'nowhere'},openclip:local-dir:{openclip_dir}",
        "--tasks",
        str(good),
        "--output-dir",
        str(out),
        "--workers",
        "0",
    )
    assert r.returncode == 1
    assert "1 pair(s) failed" in r.stderr and str(tmp_path / "nowhere") in r.stderr
    assert [p.name for p in out.rglob("*.json")] == ["toy__good.json"]


def test_dry_run_loads_nothing(openclip_dir, task_yaml, tmp_path):
    r = run_cli_inprocess(
        "run",
        "--models",
        "openclip:ViT-B-32/no-such-tag",
        "--tasks",
        str(task_yaml),
        "--dry-run",
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert r.returncode == 0 and "to run" in r.stdout
    assert not (tmp_path / "o").exists()


def test_validate_reports_precise_problems(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "model": {"spec": "x", "name": "x", "family": "x"},
                "task": {
                    "name": "t",
                    "version": 1,
                    "n_samples": 3,
                    "n_failed": 0,
                    "n_classes": 2,
                    "data_fingerprint": "f",
                },
                "metrics": {"acc1": 1.7, "acc5": None, "mean_per_class_recall": 0.5},
                "config": {"batch_size": 1, "precision": "fp32", "seed": 0},
            }
        )
    )
    r = run_cli_inprocess("validate", str(bad))
    assert r.returncode == 1
    assert "metrics.acc1: must be a fraction in [0, 1], got 1.7" in r.stdout
    assert "config.templates: missing" in r.stdout and "provenance: missing or not an object" in r.stdout


@pytest.mark.slow  # a real process to kill -9 (an interpreter with torch), then the resume
def test_killed_run_keeps_finished_pairs_and_resumes(openclip_dir, tmp_path):
    folder = make_image_folder(tmp_path / "imgs", per_class=40, size=64)
    tasks = [write_task_yaml(tmp_path / f"t{i}.yaml", f"toy/t{i}", folder) for i in range(4)]
    out = tmp_path / "out"
    args = [
        "run",
        "--models",
        f"openclip:local-dir:{openclip_dir}",
        "--tasks",
        ",".join(map(str, tasks)),
        "--output-dir",
        str(out),
        "--workers",
        "0",
        "--batch-size",
        "2",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "covar_harness.cli.main", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200"},
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.rglob("toy__t0.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in out.rglob("*.json"))
    assert "toy__t0.json" in done and len(done) < 4, done
    assert not list(out.rglob("*.tmp"))
    finished = {p: p.read_text() for p in out.rglob("*.json")}
    r = run_cli_inprocess(*args)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.rglob("*.json")) == [f"toy__t{i}.json" for i in range(4)]
    assert all(p.read_text() == text for p, text in finished.items())  # finished work untouched
    assert r.stdout.count("skipped") == len(finished)
