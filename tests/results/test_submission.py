"""validate --strict: a leaderboard submission must be what it claims (issue 17 item 2). The honest file is a real
full run of a demo model; each tampered copy changes one thing and must fail, naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from covar_harness.results import files as results
from helpers import run_cli_inprocess as cli

TASK = "covar-shapes/bg_varied"


def run_demo(data: Path, out: Path, *extra: str):
    """The shortcut demo model on bg_varied with its per-sample log, in this process."""
    return cli(
        "run",
        "--models",
        "demo/shapes-shortcut",
        "--tasks",
        TASK,
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--log-samples",
        "--workers",
        "0",
        *extra,
    )


@pytest.fixture(scope="module")
def submission(tmp_path_factory, covar_shapes_data) -> Path:
    """A full run (every image: the shipped fingerprint applies) with its per-sample log."""
    out = tmp_path_factory.mktemp("submission") / "results"
    r = run_demo(covar_shapes_data, out, "--batch-size", "120")
    assert r.returncode == 0, r.stderr[-2000:]
    (path,) = out.rglob("*.json")
    return path


def copy_of(submission: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "pr" / submission.parent.name
    folder.mkdir(parents=True)
    shutil.copy(submission, folder / submission.name)
    shutil.copy(results.samples_path(submission), results.samples_path(folder / submission.name))
    return folder / submission.name


def strict(*paths: Path, extra: tuple[str, ...] = ()):
    return cli("validate", "--strict", *extra, *map(str, paths))


def test_an_honest_full_run_passes_and_matches_the_shipped_fingerprint(submission):
    r = strict(submission)
    assert r.returncode == 0, r.stdout
    assert r.stdout.strip().endswith(": ok")


def edit(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda o: o["metrics"].update(acc1=o["metrics"]["acc1"] + 0.01), "metrics.acc1"),
        (lambda o: o["metrics"].update(bg_er=max(0.0, o["metrics"]["bg_er"] - 0.05)), "metrics.bg_er"),
        (lambda o: o["task"].update(data_fingerprint="sha256:0000000000000000"), "is not a known version"),
        (lambda o: o["provenance"].update(torch=None), "provenance: torch"),
        (lambda o: o["task"].update(n_samples=o["task"]["n_samples"] - 1), "task.n_samples says"),
    ],
)
def test_a_tampered_file_fails_naming_what_is_wrong(submission, tmp_path, change, named):
    path = copy_of(submission, tmp_path)
    edit(path, change)
    r = strict(path)
    assert r.returncode == 1 and named in r.stdout, r.stdout
    assert cli("validate", str(path)).returncode == 0  # the schema alone cannot see it


def test_a_broken_or_missing_samples_log_fails(submission, tmp_path):
    path = copy_of(submission, tmp_path)
    log = results.samples_path(path)
    lines = log.read_text().splitlines()
    first = json.loads(lines[0])
    first["correct"] = not first["correct"]
    log.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    r = strict(path)
    assert r.returncode == 1 and "disagrees with its pred and label" in r.stdout
    log.write_text("not json\n")
    assert "unreadable" in strict(path).stdout
    log.unlink()
    r = strict(path)
    assert r.returncode == 1 and "missing (submit with --log-samples)" in r.stdout


def test_duplicate_model_task_submissions_fail(submission, tmp_path):
    a = copy_of(submission, tmp_path / "a")
    b = copy_of(submission, tmp_path / "b")
    r = strict(a, b)
    assert r.returncode == 1 and "duplicate submission" in r.stdout and r.stdout.count(": ok") == 1


def test_a_limited_run_cannot_be_submitted(submission, tmp_path, covar_shapes_data):
    out = tmp_path / "limited"
    r = run_demo(covar_shapes_data, out, "--limit", "20", "--attribution", "none")
    assert r.returncode == 0
    r = strict(out)
    assert r.returncode == 1 and "a --limit run or other data cannot be submitted" in r.stdout


def test_users_register_their_own_data_versions(submission, tmp_path):
    path = copy_of(submission, tmp_path)
    fingerprint = "sha256:1234123412341234"
    edit(path, lambda o: o["task"].update(data_fingerprint=fingerprint))
    known = tmp_path / "mine.json"
    known.write_text(json.dumps({TASK: [fingerprint]}))
    assert strict(path, extra=("--fingerprints", str(known))).returncode == 0
    known.write_text(json.dumps({TASK: fingerprint}))
    r = strict(path, extra=("--fingerprints", str(known)))
    assert r.returncode == 2 and "must be a JSON object" in r.stderr
    assert cli("validate", "--fingerprints", str(known), str(path)).returncode == 2  # needs --strict


# ---- issue 25 item 2: the log is bound to the data; forged and truncated submissions fail -----------------
def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in results.samples_path(path).read_text().splitlines() if line.strip()]


def write_rows(path: Path, rows: list[dict]) -> None:
    results.samples_path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


def forged(submission: Path, tmp_path: Path, rows_change, obj_change=None) -> Path:
    """A copy whose log is rewritten by ``rows_change`` and whose counts and acc1 follow the new log, so only
    what the forgery cannot fake gives it away."""
    path = copy_of(submission, tmp_path)
    rows = rows_change(rows_of(path))
    write_rows(path, rows)

    def follow(o):
        o["task"]["n_samples"] = len(rows)
        o["metrics"]["acc1"] = sum(r["correct"] for r in rows) / len(rows)
        if obj_change:
            obj_change(o)

    edit(path, follow)
    return path


def relabel(row: dict, label: int) -> dict:
    correct = row["pred"] == label
    return {**row, "label": label, "correct": correct, "error_type": None if correct else row.get("error_type")}


def all_correct(rows):
    return [{**r, "pred": r["label"], "correct": True} for r in rows]


@pytest.mark.parametrize(
    "name, rows_change, obj_change, named",
    [
        # audit table 2D, row D2: every line rewritten correct, BG-Er dropped
        ("all-correct", all_correct, lambda o: o["metrics"].update(bg_er=None), "a correct sample has an error_type"),
        # D3: cherry-picked, the correct lines plus one error
        (
            "cherry-picked",
            lambda rows: [r for r in rows if r["correct"]][:1] + [r for r in rows if not r["correct"]][:1],
            lambda o: o["metrics"].update(bg_er=None),
            "the data version has 240",
        ),
        # D6: 240 copies of one correct line
        ("copies", lambda rows: [next(r for r in rows if r["correct"])] * len(rows), None, "is logged twice"),
        # D7: labels and predictions outside the 10 classes
        ("range", lambda rows: [{**r, "label": 999, "pred": 999} for r in rows], None, "outside the 10 classes"),
        # D15: the resume-corrupted form: rows duplicated, others missing, count still matching
        ("resume", lambda rows: rows[:8] + rows[4:8] + rows[12:], None, "is logged twice"),
        # sibling: labels rotated by one class everywhere, 'correct' recomputed (a relabelled data set)
        ("relabelled", lambda rows: [relabel(r, (r["label"] + 1) % 10) for r in rows], None, "not this data version's"),
        # sibling: pred and correct rewritten but the top-5 lists left as they were
        (
            "top5-left",
            lambda rows: [{**r, "pred": r["label"], "correct": True, "error_type": None} for r in rows],
            None,
            "'top5' must be distinct",
        ),
    ],
)
def test_a_forged_log_fails_strict_validation(submission, tmp_path, name, rows_change, obj_change, named):
    path = forged(submission, tmp_path, rows_change, obj_change)
    r = strict(path)
    assert r.returncode == 1 and named in r.stdout, (name, r.stdout)


def test_a_limit_run_with_the_shipped_fingerprint_pasted_in_fails(submission, tmp_path, covar_shapes_data):
    """Audit D4: a real --limit 4 run with task.data_fingerprint edited to the shipped one."""
    out = tmp_path / "limited"
    assert run_demo(covar_shapes_data, out, "--limit", "4", "--attribution", "none").returncode == 0
    (path,) = out.rglob("*.json")
    shipped = json.loads(submission.read_text())["task"]["data_fingerprint"]
    edit(path, lambda o: o["task"].update(data_fingerprint=shipped))
    r = strict(path)
    assert r.returncode == 1 and "config.limit: 4" in r.stdout and "the data version has 240" in r.stdout
    edit(path, lambda o: o["config"].update(limit=None))  # sibling: the limit removed too; the log still tells
    r = strict(path)
    assert r.returncode == 1 and "config.limit" not in r.stdout and "the data version has 240" in r.stdout


def test_another_subsets_result_renamed_fails(submission, tmp_path):
    """Audit D5: the bg_varied result renamed covar-shapes/hflip with hflip's fingerprint."""
    from covar_harness.results.submission import known_fingerprints

    path = copy_of(submission, tmp_path)
    (hflip,) = known_fingerprints()["covar-shapes/hflip"]
    edit(path, lambda o: o["task"].update(name="covar-shapes/hflip", data_fingerprint=hflip))
    r = strict(path)
    assert r.returncode == 1 and "not this data version's" in r.stdout, r.stdout


@pytest.mark.parametrize(
    "key, value", [("acc5", 0.0), ("mean_per_class_recall", 1.0), ("fg_driven_rate", 1.0), ("fg_driven_rate", 0.0)]
)
def test_every_metric_the_log_determines_is_recomputed(submission, tmp_path, key, value):
    """Audit D8: acc5 below acc1, mean per-class recall 1.0, fg-driven rate 1.0 (and its sibling, 0.0)."""
    path = copy_of(submission, tmp_path)
    edit(path, lambda o: o["metrics"].update({key: value}))
    assert cli("validate", str(path)).returncode == 0  # schema-valid
    r = strict(path)
    assert r.returncode == 1 and f"metrics.{key}: {value} but the samples give" in r.stdout, r.stdout


def test_the_recomputed_metrics_equal_the_runs_own(submission):
    from covar_harness.results.submission import recomputed_metrics

    obj = json.loads(submission.read_text())
    got = recomputed_metrics(rows_of(submission), obj["task"]["n_classes"])
    assert set(got) == {"acc1", "acc5", "mean_per_class_recall", "fg_driven_rate"}
    for key, value in got.items():
        assert value == pytest.approx(obj["metrics"][key], abs=1e-12), key


def test_a_registered_name_must_record_its_own_target(submission, tmp_path):
    """Audit D11: model.spec swapped to the other demo model, model.target left naming the shortcut's folder."""
    path = copy_of(submission, tmp_path)
    edit(path, lambda o: o["model"].update(spec="demo/shapes-clean"))
    r = strict(path)
    assert r.returncode == 1 and "model.target" in r.stdout and "shapes-clean" in r.stdout
    edit(path, lambda o: o["model"].update(spec="demo/shapes-shortcut@precision=fp32"))  # sibling: same model
    assert "model.target" not in strict(path).stdout


def test_look_alike_duplicate_submissions_fail(submission, tmp_path):
    """Audit D13/D14 sibling: the same spec in full-width letters beside the genuine file."""
    a = copy_of(submission, tmp_path / "a")
    b = copy_of(submission, tmp_path / "b")
    edit(b, lambda o: o["model"].update(spec="ｄｅｍｏ/shapes-shortcut", target=None))
    r = strict(a, b)
    assert r.returncode == 1 and "a look-alike of the one" in r.stdout, r.stdout


# ---- the leaderboard CI template (issue 17 item 3): the script the workflow runs, exercised for real -----------
def git(repo: Path, *args: str) -> None:
    import subprocess

    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={
            **__import__("os").environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )


def ci(repo: Path, *args: str):
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(repo / "summary.md"),
        "COLUMNS": "200",
    }
    return subprocess.run(
        ["bash", "leaderboard-ci.sh", *args], cwd=repo, capture_output=True, text=True, env=env, timeout=300
    )


def test_init_leaderboard_writes_the_workflow_and_never_overwrites(tmp_path):
    import yaml

    repo = tmp_path / "board"
    r = cli("init-leaderboard", str(repo), "--harness-spec", "covar-harness @ git+https://example.org/h@v1")
    assert r.returncode == 0, r.stderr
    workflow = yaml.safe_load((repo / ".github/workflows/leaderboard.yml").read_text())
    steps = workflow["jobs"]["check"]["steps"] + workflow["jobs"]["leaderboard"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "leaderboard-ci.sh pr" in runs and "leaderboard-ci.sh main" in runs
    # the pull-request job runs submitted content: read-only; only the jobs on main may write
    assert workflow["permissions"] == {"contents": "read"} and workflow["jobs"]["check"]["permissions"] == {
        "contents": "read"
    }
    assert 'pip install "covar-harness @ git+https://example.org/h@v1"' in runs
    assert (repo / "results").is_dir()
    (repo / "leaderboard-ci.sh").write_text("# mine\n")
    r = cli("init-leaderboard", str(repo))
    assert r.returncode == 2 and "leaderboard-ci.sh" in r.stderr
    assert (repo / "leaderboard-ci.sh").read_text() == "# mine\n"
    assert cli("init-leaderboard", str(tmp_path / "x"), "--harness-spec", 'a"; rm -rf /').returncode == 2


def test_the_ci_script_checks_a_pull_request_and_rebuilds_main(submission, tmp_path):
    repo = tmp_path / "board"
    assert cli("init-leaderboard", str(repo)).returncode == 0
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    git(repo, "checkout", "-q", "-b", "submission")
    folder = repo / "results" / submission.parent.name
    folder.mkdir(parents=True)
    shutil.copy(submission, folder)
    shutil.copy(results.samples_path(submission), folder)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "submit")
    r = ci(repo, "pr", "main")
    assert r.returncode == 0, r.stdout + r.stderr
    assert submission.name in r.stdout and "| demo/shapes-shortcut |" in (repo / "summary.md").read_text()
    edit(folder / submission.name, lambda o: o["metrics"].update(acc1=0.99))
    git(repo, "commit", "-q", "-am", "tamper")
    r = ci(repo, "pr", "main")
    assert r.returncode == 1 and "metrics.acc1" in r.stdout
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    r = ci(repo, "main")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "demo/shapes-shortcut" in (repo / "LEADERBOARD.md").read_text()
    assert (repo / "site" / "index.html").is_file()


def _board_with(submission: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A leaderboard repository whose main holds one valid submission; a branch ``pr`` is checked out."""
    repo = tmp_path / "board"
    assert cli("init-leaderboard", str(repo)).returncode == 0
    folder = repo / "results" / submission.parent.name
    folder.mkdir(parents=True)
    shutil.copy(submission, folder)
    shutil.copy(results.samples_path(submission), folder)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    git(repo, "checkout", "-q", "-b", "pr")
    return repo, folder / submission.name


@pytest.mark.parametrize("folder", ["モデル", "tab\tand space", "plain"])
def test_the_pr_check_validates_a_result_under_any_name(submission, tmp_path, folder):
    """Issue 25 item 3 (audit C9): git quotes non-ASCII paths, so the old check saw no result file and passed."""
    repo, _ = _board_with(submission, tmp_path)
    (repo / "results" / folder).mkdir()
    (repo / "results" / folder / "x.json").write_text('{"schema_version": 1}')
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pr")
    r = ci(repo, "pr", "main")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"results/{folder.replace(chr(9), '?')}/x.json" in r.stdout  # listed unquoted, control characters shown as ?


def test_the_pr_check_validates_a_change_to_a_samples_log_alone(submission, tmp_path):
    """Audit C10: a PR that only flips one 'correct' in samples.jsonl; sibling: one that deletes the log."""
    repo, path = _board_with(submission, tmp_path)
    log = results.samples_path(path)
    rows = rows_of(path)
    rows[0]["correct"] = not rows[0]["correct"]
    write_rows(path, rows)
    git(repo, "commit", "-q", "-am", "flip")
    r = ci(repo, "pr", "main")
    assert r.returncode == 1 and "disagrees with its pred and label" in r.stdout, r.stdout
    git(repo, "reset", "-q", "--hard", "main")
    git(repo, "rm", "-q", str(log))
    git(repo, "commit", "-q", "-m", "drop the log")
    r = ci(repo, "pr", "main")
    assert r.returncode == 1 and "missing (submit with --log-samples)" in r.stdout and log.name in r.stdout


def test_the_pr_check_reads_the_fingerprints_from_the_base(submission, tmp_path):
    """Audit C12: a PR that registers its own data version in fingerprints.json is not trusted."""
    repo, path = _board_with(submission, tmp_path)
    mine = "sha256:1234123412341234"
    edit(path, lambda o: o["task"].update(data_fingerprint=mine))
    (repo / "fingerprints.json").write_text(json.dumps({TASK: [mine]}))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "my own data version")
    r = ci(repo, "pr", "main")
    assert r.returncode == 1 and "is not a known version" in r.stdout, r.stdout
