"""Issue 25 item 8: the mutation loop that protects classification results covers faithfulness results too. A
faithfulness file that ``validate`` accepts must never crash ``leaderboard`` (any format) or ``report``; before,
``settings.score: ["a"]`` passed validate and every format died with ``TypeError: unhashable type: 'list'``."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from covar_harness.leaderboard import render
from covar_harness.leaderboard import tables as lb
from covar_harness.leaderboard.report.html import leaderboard_page
from covar_harness.results import validation
from covar_harness.results.faithfulness import METRICS, SCHEMA
from helpers import run_cli_inprocess

VALUES = [
    "x", "", None, True, -1, 0, 2, 1e308, 10**30, [], {}, ["a"], [0.1, 0.2], [0.2, 0.1], {"a": 1}, "[/x]",
    "\x1b[5m", "=1+1", "a|b", "猫", 0.5, [[1]], [None, None],
]  # fmt: skip


def faithfulness_record(model: str = "demo/shapes-clean", method: str = "cci") -> dict:
    """What ``covar-harness faithfulness`` writes, with every section the table, csv and json read."""
    metrics = {name: {"mean": 0.25, "interval": [0.2, 0.3], "n": 4} for name in METRICS}
    rec = {
        "schema": SCHEMA,
        "model": model,
        "task": "covar-shapes/original",
        "attributor": method,
        "n_samples": 4,
        "n_failed_images": 0,
        "error": None,
        "notes": [],
        "metrics": metrics,
        "paired": {"random": {"deletion_auc": {"mean": -0.1, "interval": [-0.2, 0.0], "p": 0.04, "n": 4}}},
        "curves": {"deletion": {"x": [0.0, 1.0], "mean": [0.5, 0.1]}},
        "settings": {"score": "cosine", "steps": 4, "replacement": "blur", "bootstrap": 50},
        "samples": [],
    }
    rec.update({name: 0.25 for name in METRICS})
    return rec


def _mutations():
    base = faithfulness_record()
    paths = [(key,) for key in base] + [("settings", k) for k in base["settings"]] + [("settings", "new")]
    paths += [("metrics", "deletion_auc", k) for k in ("mean", "interval", "n")] + [("metrics", "deletion_auc")]
    paths += [("curves", "deletion"), ("curves", "deletion", "x")]
    paired = ("paired", "random", "deletion_auc")
    paths += [paired, paired[:2], ("paired", "random", "rank"), *((*paired, k) for k in ("mean", "interval", "p", "n"))]
    for path in paths:
        for value in [*VALUES, "<delete>"]:
            yield [(path, value)]
    for value in VALUES:  # the same value on the method's random baseline
        yield [(("settings", "score"), value), (("attributor",), "random")]


def _apply(edits) -> dict:
    rec = faithfulness_record()
    for path, value in edits:
        node = rec
        for key in path[:-1]:
            node = node[key]
        if value == "<delete>":
            node.pop(path[-1], None)
        else:
            node[path[-1]] = copy.deepcopy(value)
    if any(path[-1] == "mean" for path, _ in edits) and isinstance(rec["metrics"].get("deletion_auc"), dict):
        rec["deletion_auc"] = rec["metrics"]["deletion_auc"].get("mean")  # keep the headline copy in step
    return rec


def _every_format(faithfulness: list[dict]) -> None:
    tables = lb.build_tables([], None, faithfulness)
    render.render_rich(tables, Console(file=io.StringIO(), width=120))
    render.render_markdown(tables)
    render.render_csv([], None, faithfulness)
    render.render_json([], tables, None, faithfulness)
    leaderboard_page([], tables)


def test_a_faithfulness_file_validate_accepts_never_crashes_the_leaderboard(tmp_path):
    accepted = []
    for i, edits in enumerate(_mutations()):
        rec = _apply(edits)
        try:
            text = json.dumps(rec, allow_nan=False)
        except (TypeError, ValueError):
            continue
        if validation.validate_any(json.loads(text)):
            continue
        others = [faithfulness_record(method="random"), faithfulness_record(model="other")]
        try:
            _every_format([json.loads(text), *others])
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{edits!r} passed validate but crashed the leaderboard: {exc!r}")
        accepted.append((i, text))
    assert len(accepted) > 50  # the loop really exercised the renderers
    folder = tmp_path / "results"
    folder.mkdir()
    for i, text in accepted:  # and the report, once over every accepted file
        (folder / f"m{i}.json").write_text(text)
    r = run_cli_inprocess("report", str(folder), "--out", str(tmp_path / "site"))
    assert r.returncode == 0 and "internal error" not in r.stderr, r.stderr[-2000:]
    for fmt in ("table", "csv", "json", "markdown", "html"):
        r = run_cli_inprocess("leaderboard", str(folder), "--format", fmt)
        assert r.returncode == 0, (fmt, r.stderr[-2000:])


@pytest.mark.parametrize("value", [["a"], {"a": 1}, [[1]], float("nan")])
def test_non_scalar_settings_are_refused_by_validate(tmp_path, value):
    """The audit's case (1.18: ``settings.score: ["a"]``) and siblings; a NaN cannot even be written as JSON."""
    rec = faithfulness_record()
    rec["settings"]["score"] = value
    errors = validation.validate_any(rec)
    assert errors and errors[0].startswith("settings.score: must be text, a finite number"), errors
    path = Path(tmp_path / "f.json")
    path.write_text(json.dumps(rec))
    r = run_cli_inprocess("validate", str(path))
    assert r.returncode == 1 and ("settings.score" in r.stdout or "NaN is not valid JSON" in r.stdout), r.stdout
