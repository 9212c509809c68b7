"""``covar-harness export`` (issue 17 item 5), offline: the Hugging Face layouts written to a folder and parsed
back, Weights & Biases through a fake module (and the real one in offline mode when it is installed), and every
refusal (an unrelated --out, wandb or huggingface_hub missing, the Hub switched off) as one line and exit 2."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from covar_harness.common.safe_files import slug
from covar_harness.leaderboard import exports
from covar_harness.leaderboard import tables as lb
from covar_harness.results import files as results
from result_records import valid_record

# Names a validator accepts (one line, no control characters) but that mean something to YAML.
HOSTILE_MODEL = "evil: &a [*a] !!python/object/apply:os.system ['echo pwned'] # \"'"
HOSTILE_TASK = "fam/--- {x: 1} | > %YAML"
MODELS = ("demo/shapes-clean", HOSTILE_MODEL)
TASKS = ("covar-shapes/original", HOSTILE_TASK)


def cli(*args: object, env: dict | None = None, monkeypatch=None) -> tuple[int, str, str]:
    from covar_harness.cli.main import main

    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), out.getvalue(), err.getvalue()


def make_results(root: Path, models=MODELS, tasks=TASKS) -> Path:
    for i, model in enumerate(models):
        for j, task in enumerate(tasks):
            rec = valid_record(model, task, acc1=0.5 + 0.125 * i + 0.0625 * j)
            rec["metrics"]["bg_er"] = 0.1 * (i + 1) + 0.01 * j
            results.write_json(results.result_path(root, model, task), rec)
    return root


def records(root: Path) -> list[dict]:
    return lb.collect(root).records


def expected(root: Path, model: str, task: str) -> dict[str, float]:
    """The leaderboard's numbers for one pair: metric -> value, numbers only."""
    rows = lb.long_records([r for r in records(root) if r["model"]["spec"] == model and r["task"]["name"] == task])
    return {row["metric"]: row["value"] for row in rows if results.is_number(row["value"])}


# ---- Hugging Face ---------------------------------------------------------------------------------------
def test_hf_layout_parses_and_carries_the_leaderboards_numbers(tmp_path, monkeypatch):
    res = make_results(tmp_path / "results")
    url = "https://example.org/covar"
    code, out, err = cli(
        "export", res, "--to", "hf", "--out", tmp_path / "hf", "--source-url", url, monkeypatch=monkeypatch
    )
    assert code == 0, err
    assert "2 model folder(s)" in out
    folders = sorted(p.name for p in (tmp_path / "hf").iterdir() if p.is_dir())
    assert folders == sorted(slug(m) for m in MODELS)
    for model in MODELS:
        folder = tmp_path / "hf" / slug(model)
        text = (folder / "README.md").read_text(encoding="utf-8")
        assert text.startswith("---\n") and text.endswith("---\n")
        card = yaml.safe_load(text[4:-4])
        (entry,) = card["model-index"]
        assert entry["name"] == model
        assert {r["dataset"]["name"] for r in entry["results"]} == set(TASKS)
        for result in entry["results"]:
            assert result["task"] == {"type": "zero-shot-image-classification", "name": exports.TASK_TITLE}
            assert result["dataset"]["split"] == "test" and result["source"] == {"name": "covar-harness 0", "url": url}
            want = expected(tmp_path / "results", model, result["dataset"]["name"])
            got = {m["name"]: m["value"] for m in result["metrics"]}
            assert got == {exports.METRIC_NAMES.get(k, k): v for k, v in want.items()}
            assert next(m for m in result["metrics"] if m["name"] == "top-1 accuracy")["type"] == "accuracy"
        for task in TASKS:
            (item,) = yaml.safe_load((folder / ".eval_results" / f"{slug(task)}.yaml").read_text("utf-8"))
            assert item["dataset"] == {"id": task, "task_id": "acc1"}
            assert item["value"] == expected(tmp_path / "results", model, task)["acc1"]
            assert item["date"] == "2024-01-01" and item["source"] == {"name": "covar-harness 0", "url": url}


def test_huggingface_hub_reads_the_model_index_back(tmp_path, monkeypatch):
    """The Hub's own parser (huggingface_hub.repocard_data) accepts the block, with and without a source."""
    repocard_data = pytest.importorskip("huggingface_hub.repocard_data")
    res = make_results(tmp_path / "results")
    for url in (None, "https://example.org/covar"):
        for doc in exports.hf_documents(records(res), url).values():
            name, evals = repocard_data.model_index_to_eval_results(doc["model_index"])
            assert name in MODELS and {e.dataset_name for e in evals} == set(TASKS)
            assert all(e.task_type == "zero-shot-image-classification" and e.dataset_split == "test" for e in evals)
            assert all(e.source_url == url for e in evals)
            for e in evals:
                assert (
                    e.metric_value
                    == expected(res, name, e.dataset_name)[
                        {v: k for k, v in exports.METRIC_NAMES.items()}.get(e.metric_name, e.metric_name)
                    ]
                )
            if url is None:
                assert all("source" not in r for r in doc["model_index"][0]["results"])


def test_yaml_holds_no_tags_anchors_or_control_characters(tmp_path, monkeypatch):
    res = make_results(tmp_path / "results")
    assert cli("export", res, "--to", "hf", "--out", tmp_path / "hf", monkeypatch=monkeypatch)[0] == 0
    for path in (tmp_path / "hf").rglob("*"):
        if path.is_file() and path.suffix in (".md", ".yaml"):
            text = path.read_text(encoding="utf-8")
            doc = text
            for event in yaml.parse(
                doc[4:-4] if path.suffix == ".md" else doc
            ):  # hostile "&a", "*a", "!!python/..." stay inside quoted strings
                assert getattr(event, "anchor", None) is None and getattr(event, "tag", None) is None
            assert not any(ord(c) < 32 and c != "\n" for c in text)
    docs = exports.hf_documents(records(res))
    assert exports._dump(docs) and yaml.safe_load(exports._dump(docs)) == docs  # round trip, every string inert


def test_out_must_be_new_empty_or_an_earlier_export(tmp_path, monkeypatch):
    res = make_results(tmp_path / "results", models=MODELS[:1], tasks=TASKS[:1])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, out, err = cli("export", res, "--to", "hf", "--out", mine, monkeypatch=monkeypatch)
    assert code == 2 and "holds no earlier export" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cli("export", res, "--to", "hf", "--out", a_file, monkeypatch=monkeypatch)[0] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("export", res, "--to", "hf", "--out", empty, monkeypatch=monkeypatch)[0] == 0
    (empty / "stale").mkdir()
    assert cli("export", res, "--to", "hf", "--out", empty, monkeypatch=monkeypatch)[0] == 0  # earlier export
    assert not (empty / "stale").exists() and (empty / exports.MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_invalid_files_are_skipped_and_an_empty_folder_refused(tmp_path, monkeypatch):
    res = make_results(tmp_path / "results", models=MODELS[:1], tasks=TASKS[:1])
    (res / "broken.json").write_text("{not json")
    code, _, err = cli("export", res, "--to", "hf", "--out", tmp_path / "hf", monkeypatch=monkeypatch)
    assert code == 0 and "skipped invalid result" in err
    (tmp_path / "none").mkdir()
    code, _, err = cli("export", tmp_path / "none", "--to", "hf", "--out", tmp_path / "x", monkeypatch=monkeypatch)
    assert code == 2 and "no valid result files" in err
    code, _, err = cli("export", tmp_path / "missing", "--to", "hf", "--out", tmp_path / "x", monkeypatch=monkeypatch)
    assert code == 2 and "does not exist" in err
    code, _, err = cli("export", res, "--to", "hf", "--model", "nope", "--out", tmp_path / "y", monkeypatch=monkeypatch)
    assert code == 2 and "of model 'nope'" in err and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--to", "hf"], "--to hf needs --out"),
        (["--to", "hf", "--out", "o", "--project", "p"], "go with --to wandb"),
        (["--to", "wandb"], "--to wandb needs --project"),
        (["--to", "wandb", "--project", "p", "--out", "o"], "go with --to hf"),
        (["--to", "hf", "--out", "o", "--source-url", "javascript:alert(1)"], "not an http(s) URL"),
    ],
)
def test_flag_mistakes_are_one_line(tmp_path, monkeypatch, flags, message):
    code, _, err = cli("export", tmp_path, *flags, monkeypatch=monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_push_refusals_come_before_anything_is_written(tmp_path, monkeypatch):
    res = make_results(tmp_path / "results")
    out = tmp_path / "hf"
    code, _, err = cli("export", res, "--to", "hf", "--out", out, "--push", "me/model", monkeypatch=monkeypatch)
    assert code == 2 and "exactly one model" in err and not out.exists()
    one = ["--model", MODELS[0], "--push"]
    code, _, err = cli("export", res, "--to", "hf", "--out", out, *one, "not a repo", monkeypatch=monkeypatch)
    assert code == 2 and "not a Hub repository id" in err and not out.exists()
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    code, _, err = cli("export", res, "--to", "hf", "--out", out, *one, "me/model", monkeypatch=monkeypatch)
    assert code == 2 and "pip install huggingface_hub" in err and not out.exists()
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.ModuleType("huggingface_hub"))
    env = {"HF_HUB_OFFLINE": "1"}
    code, _, err = cli("export", res, "--to", "hf", "--out", out, *one, "me/model", env=env, monkeypatch=monkeypatch)
    assert code == 2 and "HF_HUB_OFFLINE" in err and not out.exists()


def test_push_opens_pull_requests_through_huggingface_hub(tmp_path, monkeypatch):
    """A fake huggingface_hub records the calls: the test never reaches the network."""
    calls: list[tuple] = []

    class Api:
        def upload_folder(self, **kwargs):
            files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
            calls.append(("upload_folder", kwargs, files))
            return types.SimpleNamespace(pr_url="https://hub.example/me/model/discussions/1")

    hub = types.ModuleType("huggingface_hub")
    hub.HfApi = Api  # type: ignore[attr-defined]
    hub.metadata_update = lambda *a, **k: calls.append(("metadata_update", a, k))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    res = make_results(tmp_path / "results")
    flags = ["--model", MODELS[0], "--push", "me/model"]
    code, out, err = cli("export", res, "--to", "hf", "--out", tmp_path / "hf", *flags, monkeypatch=monkeypatch)
    assert code == 0, err
    assert "discussions/1" in out
    (_, upload, files), (_, (repo, metadata), options) = calls
    assert upload["repo_id"] == "me/model" and upload["create_pr"] and upload["path_in_repo"] == ".eval_results"
    assert files == sorted(f"{slug(t)}.yaml" for t in TASKS)
    assert repo == "me/model" and options == {"overwrite": False, "create_pr": True}
    assert metadata["model-index"][0]["name"] == MODELS[0]
    assert metadata["model-index"][0]["results"][0]["source"]["url"] == "https://huggingface.co/me/model"


# ---- Weights & Biases -------------------------------------------------------------------------------------
def test_wandb_missing_is_one_line_and_exit_2(tmp_path, monkeypatch):
    res = make_results(tmp_path / "results", models=MODELS[:1], tasks=TASKS[:1])
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed, whether or not it is
    code, out, err = cli("export", res, "--to", "wandb", "--project", "p", monkeypatch=monkeypatch)
    assert code == 2 and "pip install wandb" in err and len(err.strip().splitlines()) == 1 and out == ""


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_really_absent_in_a_fresh_process(tmp_path):
    res = make_results(tmp_path / "results", models=MODELS[:1], tasks=TASKS[:1])
    proc = subprocess.run(
        [sys.executable, "-m", "covar_harness.cli.main", "export", str(res), "--to", "wandb", "--project", "p"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "pip install wandb" in proc.stderr and "Traceback" not in proc.stderr


class FakeRun:
    def __init__(self, log: list, kwargs: dict) -> None:
        self.events, self.kwargs, self.summary = log, kwargs, {}
        self.logged: dict = {}

    def log(self, data: dict) -> None:
        self.logged.update(data)

    def finish(self) -> None:
        self.events.append(self)


def fake_wandb() -> tuple[types.ModuleType, list]:
    finished: list = []
    module = types.ModuleType("wandb")

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    module.Table = Table  # type: ignore[attr-defined]
    module.init = lambda **kwargs: FakeRun(finished, kwargs)  # type: ignore[attr-defined]
    return module, finished


def test_wandb_logs_one_run_per_model_with_the_long_records(tmp_path, monkeypatch):
    module, finished = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    res = make_results(tmp_path / "results")
    code, out, err = cli("export", res, "--to", "wandb", "--project", "proj", monkeypatch=monkeypatch)
    assert code == 0, err
    assert "2 run(s)" in out
    assert sorted(run.kwargs["name"] for run in finished) == sorted(MODELS)
    for run in finished:
        assert run.kwargs["project"] == "proj" and run.kwargs["entity"] is None
        mine = [r for r in records(res) if r["model"]["spec"] == run.kwargs["name"]]
        table = run.logged["long_records"]
        assert table.columns == lb.LONG_FIELDS
        assert table.data == [[row[f] for f in lb.LONG_FIELDS] for row in lb.long_records(mine)]
        assert run.summary == {f"{r['task']['name']}/acc1": r["metrics"]["acc1"] for r in mine}


def test_real_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    res = make_results(tmp_path / "results", models=MODELS[:1], tasks=TASKS[:1])
    code, out, err = cli("export", res, "--to", "wandb", "--project", "proj", monkeypatch=monkeypatch)
    assert code == 0, err
    assert any((tmp_path / "wandb").rglob("*.wandb"))


def test_export_help_stays_light():
    code = (
        "import sys\nfrom covar_harness.cli.main import main\n"
        "try:\n    main(['export', '--help'])\nexcept SystemExit:\n"
        "    pass\nassert not {'torch', 'wandb', 'huggingface_hub'} & set(sys.modules), sorted(sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
