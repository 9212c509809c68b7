"""Issue 12 hardening of the `validate`, `leaderboard` and `plugins` commands: folders, missing paths, tampered
files, markup in file names (13, 14, 21), published rows on the command line (19), and `| head` (21)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from covar_harness.cli.main import main
from covar_harness.results import files as results
from helpers import patch_everywhere, run_cli_inprocess
from result_records import deadline, valid_record


def _folder(tmp_path):
    good = tmp_path / "res"
    results.write_json(results.result_path(good, "demo/shapes-clean", "covar/hflip"), valid_record(task="covar/hflip"))
    results.write_json(results.result_path(good, "m", "covar/crop"), valid_record(model="m", task="covar/crop"))
    results.write_jsonl(results.samples_path(results.result_path(good, "m", "covar/crop")), [{"i": 1}])
    return good


def test_validate_accepts_folders_recursively_and_skips_sample_logs(tmp_path, capsys):
    good = _folder(tmp_path)
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok") == 2 and "samples.jsonl" not in out and "2 file(s): 2 ok, 0 invalid" in out
    (good / "m" / "bad.json").write_text(json.dumps({**valid_record(), "intervals": "x"}))
    assert main(["validate", str(good), str(good / "demo__shapes-clean" / "covar__hflip.json")]) == 1
    out = capsys.readouterr().out
    assert "bad.json: intervals: must be an object" in out and "1 invalid" in out


@pytest.mark.parametrize("args", [["nowhere.json"], ["{good}", "nowhere"]])
def test_validate_missing_path_is_one_line_and_exit_2(tmp_path, capsys, args):
    good = _folder(tmp_path)
    code = main(["validate", *[a.format(good=good) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and "no such file or folder: 'nowhere" in err and len(err.strip().splitlines()) == 1


def test_validate_empty_folder_is_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 2
    assert "no *.json result files" in capsys.readouterr().err


def test_validate_tampered_files_one_line_each_never_a_traceback(tmp_path, capsys):
    os.mkfifo(tmp_path / "p.json")
    (tmp_path / "z.json").symlink_to("/dev/zero")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    rec = valid_record(model="\x1b[5mblink[/x]")
    (tmp_path / "esc.json").write_text(json.dumps(rec))
    with deadline(20):
        code = main(["validate", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and "\x1b" not in out
    lines = {line.split(": ", 1)[0].rsplit("/", 1)[-1]: line for line in out.splitlines() if ": " in line}
    assert "not a regular file" in lines["p.json"] and "not a regular file" in lines["z.json"]
    assert "nested deeper" in lines["deep.json"] and "model.spec: must not contain control" in out


def test_leaderboard_skips_tampered_files_and_prints_markup_literally(tmp_path, capsys):
    good = _folder(tmp_path)
    os.mkfifo(good / "p.json")
    (good / "[").mkdir()
    (good / "[" / "x].json").write_text("{")
    rec = valid_record(model="[/x]evil[blink]", task="covar/scale")
    results.write_json(good / "ok.json", rec)
    with deadline(20):
        code = main(["leaderboard", str(good)])
    captured = capsys.readouterr()
    assert code == 0 and "[/x]evil[blink]" in captured.out
    assert captured.err.count("skipped invalid result") == 2 and "[/x].json" in captured.err


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_reference_paper_with_no_own_results_prints_published_rows(tmp_path, capsys, fmt):
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", str(tmp_path / "empty"), "--reference", "paper", "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "ViT-L/14 224 LAION-2B (paper, published)" in out
    assert "ViT-L/14 OpenAI (CounterAnimals paper, published)" in out
    if fmt in ("table", "markdown"):
        assert "may differ from the paper's" in out


def test_leaderboard_without_results_or_reference_is_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", str(tmp_path / "empty")]) == 2


def _closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI with its stdout's reader already gone, as in ``covar-harness ... | head -0``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "covar_harness.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120"},
    )
    proc.stdout.close()  # before the child writes anything
    err = proc.stderr.read().decode()
    return subprocess.CompletedProcess(args, proc.wait(timeout=120), "", err)


@pytest.mark.parametrize(
    "args",
    [
        ["plugins", "--json"],
        ["plugins"],
        ["leaderboard", "{res}", "--format", "csv"],
        ["leaderboard", "{res}", "--reference", "paper"],
        ["validate", "{res}"],
    ],
)
def test_output_piped_to_a_closed_reader_exits_quietly(tmp_path, args):
    res = _folder(tmp_path)
    r = _closed_pipe(*[a.format(res=res) for a in args])
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr and "Exception ignored" not in r.stderr, (
        r.stderr
    )
    assert r.returncode in (0, 141), (r.returncode, r.stderr)


def test_plugins_json_strips_control_characters(capsys, monkeypatch):
    from covar_harness.catalog import plugin_manager

    real = plugin_manager.load_catalog

    def tampered(*a, **k):
        catalog = real(*a, **k)
        catalog.plugins = [dataclasses.replace(catalog.plugins[0], name="evil\x1b[5m[/x]"), *catalog.plugins[1:]]
        return catalog

    patch_everywhere(monkeypatch, plugin_manager, "load_catalog", tampered)
    assert main(["plugins", "--json"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\u001b" not in out and "evil[5m[/x]" in out
    assert main(["plugins"]) == 0
    assert "evil[5m[/x]" in capsys.readouterr().out


def test_cli_validate_folder_end_to_end(tmp_path):
    good = _folder(tmp_path)
    r = run_cli_inprocess("validate", str(good))
    assert r.returncode == 0 and r.stdout.count(": ok") == 2
    r = run_cli_inprocess("validate", str(tmp_path / "missing"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
