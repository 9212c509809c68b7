"""Issue 12 hardening of the leaderboard and the shared table printer: untrusted text stays inert in every format
(13), tampered files are skipped and accepted files never crash it (14), published rows (19), truncation (16)."""

from __future__ import annotations

import copy
import csv
import io
import json
import os

import pytest
from rich.console import Console

from covar_harness.common.console import print_rows
from covar_harness.data.subsets import COVAR_SUBSETS
from covar_harness.leaderboard import render
from covar_harness.leaderboard import tables as lb
from covar_harness.results import files as results
from covar_harness.results import validation
from result_records import deadline, valid_record

HOSTILE = "[/x]e[blink]v[/blink]\x1b[5mil\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\|<b>=1+2"


def _rich(tables, width: int = 100, terminal: bool = True) -> str:
    buf = io.StringIO()
    render.render_rich(
        tables, Console(file=buf, width=width, force_terminal=terminal, color_system="truecolor" if terminal else None)
    )
    return buf.getvalue()


def _all_formats(records: list[dict], reference: str | None) -> dict[str, str]:
    tables = lb.build_tables(records, reference)
    return {
        "table": _rich(tables, terminal=False),
        "markdown": render.render_markdown(tables),
        "csv": render.render_csv(records, reference),
        "json": render.render_json(records, tables, reference),
    }


def _hostile_records() -> list[dict]:
    """Records a tampered file could hold if it got past validation (renderers must not rely on it)."""
    a = valid_record(model=HOSTILE, task="covar/hflip")
    b = valid_record(model="-cmd|x", task=f"fam{HOSTILE}/sub [/y]")
    b["metrics"]["delta"] = -0.5
    b["model"]["family"] = "@SUM(A1)"
    return [a, b]


# ---- 13: untrusted text -----------------------------------------------------------------------------------
def test_markup_and_escapes_in_names_are_printed_literally_and_inert_in_every_format():
    out = _all_formats(_hostile_records(), "paper")
    for fmt, text in out.items():
        assert "\x1b" not in text and "\x9b" not in text, fmt
        assert "\\u001b" not in text, fmt
    assert "[/x]e[blink]v[/blink]" in out["table"]  # literally: no MarkupError, no blinking
    assert "[/x]e[blink]v[/blink]" in out["markdown"] and "\\|&lt;b&gt;=1+2" in out["markdown"]
    json.loads(out["json"])
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert any(r["model"] == "'-cmd|x" for r in rows)  # formula injection neutralised
    assert any(r["family"] == "'@SUM(A1)" for r in rows)
    assert any(r["metric"] == "delta" and r["value"] == "-0.5" for r in rows)  # numbers untouched
    styled = _rich(lb.build_tables(_hostile_records()), terminal=True)
    assert "\x1b[5m" not in styled and "\x1b]8;" not in styled  # no blink, no OSC-8 link from the data


def test_markdown_cells_escape_pipes_and_stay_on_one_line():
    rec = valid_record(model="a|b\nc", task="covar/hflip")
    md = render.render_markdown(lb.build_tables([rec]))
    row = next(line for line in md.splitlines() if line.startswith("| a"))
    assert row.startswith("| a\\|b c |")


def test_print_rows_shows_markup_in_titles_headers_and_cells_literally():
    buf = io.StringIO()
    print_rows(
        Console(file=buf, width=80, color_system=None),
        "[/x] title [bold]",
        ["[/c]", "n"],
        [["[/x]model[red]", "[link=http://e]1[/link]"]],
        caption="[/cap]",
    )
    text = buf.getvalue()
    for literal in ("[/x] title [bold]", "[/c]", "[/x]model[red]", "[link=http://e]1[/link]", "[/cap]"):
        assert literal in text


def test_print_rows_never_cuts_wide_characters():
    buf = io.StringIO()
    name = "猫" * 20  # 40 terminal cells
    print_rows(Console(file=buf, width=30, color_system=None), "t", ["model", "acc"], [[name, "1.0"]])
    assert name in buf.getvalue() and "…" not in buf.getvalue()


# ---- 16: truncation ---------------------------------------------------------------------------------------
def test_print_rows_truncates_only_the_columns_asked():
    buf = io.StringIO()
    model = "openclip:local-dir:/a/very/long/path/" + "m" * 120
    error = "RuntimeError: " + "x" * 900 + "\nsecond line"
    print_rows(
        Console(file=buf, width=80, color_system=None),
        "run summary",
        ["model", "status", "error"],
        [[model, "failed", error]],
        truncate={"error": 60},
    )
    lines = buf.getvalue().splitlines()
    assert model in buf.getvalue()  # names are never cut
    assert max(len(line) for line in lines) < len(model) + 80
    assert "…" in buf.getvalue() and "second line" not in buf.getvalue()


# ---- 14: tampered files -----------------------------------------------------------------------------------
def test_collect_skips_every_unusable_file_with_one_line(tmp_path):
    results.write_json(tmp_path / "good.json", valid_record())
    bad = {
        "intervals_str.json": {**valid_record(), "intervals": "x"},
        "headline.json": {
            **valid_record(),
            "task": {**valid_record()["task"], "headline": "label"},
            "metrics": {**valid_record()["metrics"], "label": "cat"},
        },
        "list.json": [1, 2],
    }
    for name, obj in bad.items():
        (tmp_path / name).write_text(json.dumps(obj))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "nan.json").write_text(json.dumps(valid_record()).replace('"acc1": 0.75', '"acc1": NaN'))
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "[").mkdir()
    (tmp_path / "[" / "x].json").write_text("{")  # printed as ".../[/x].json": a markup closing tag
    os.mkfifo(tmp_path / "p.json")
    (tmp_path / "z.json").symlink_to("/dev/zero")
    (tmp_path / "sub.json").mkdir()
    with deadline(20):
        loaded = lb.collect(tmp_path)
    assert [r["model"]["spec"] for r in loaded.records] == ["demo/shapes-clean"]
    skipped = {p.name: why for p, why in loaded.invalid}
    assert set(skipped) == set(bad) | {"deep.json", "nan.json", "bin.json", "x].json", "p.json", "z.json"}
    assert all("\n" not in why and len(why) < 400 for why in skipped.values())
    assert "not a regular file" in skipped["p.json"] and "not a regular file" in skipped["z.json"]


def _mutations():
    """Lists of (path, value) edits: every field of a record set to every hostile value, deletions, and a
    headline pointing at each odd metric."""
    values = [
        "x",
        "",
        None,
        True,
        -1,
        0,
        2,
        1e308,
        -1e308,
        10**30,
        [],
        {},
        [0.1, 0.2],
        [0.2, 0.1],
        {"a": 1},
        "[/x]",
        "\x1b[5m",
        "=1+1",
        "a|b",
        "猫",
        0.5,
    ]
    base = valid_record(task="covar/hflip")
    paths = []
    for section, block in base.items():
        paths.append((section,))
        if isinstance(block, dict):
            paths += [(section, key) for key in block]
    paths += [("metrics", "custom"), ("task", "headline"), ("intervals", "bg_er"), ("metrics", "bg_er")]
    for path in paths:
        for value in values + ["<delete>"]:
            yield [(path, value)]
    for name in (
        "covar/original",
        "covar/scale",
        "counteranimals/common",
        "counteranimals/counter-45way",
        "covar-shapes/hflip",
        "x",
        "/",
        "covar/",
        "/covar",
    ):
        yield [(("task", "name"), name)]
    for value in values:
        yield [(("metrics", "custom"), value), (("task", "headline"), "custom")]
        yield [(("metrics", "custom"), value), (("task", "headline"), "custom"), (("task", "name"), "fam/x")]
        yield [
            (("metrics", "custom"), value),
            (("task", "headline"), "custom"),
            (("task", "name"), "counteranimals/common"),
        ]


def _apply(edits) -> dict:
    rec = valid_record(task="covar/hflip")
    for path, value in edits:
        node = rec
        for key in path[:-1]:
            node = node[key]
        if value == "<delete>":
            node.pop(path[-1], None)
        else:
            node[path[-1]] = copy.deepcopy(value)
    return rec


@pytest.mark.parametrize("reference", [None, "paper"])
def test_a_file_validate_accepts_never_crashes_any_leaderboard_format(tmp_path, reference):
    accepted = 0
    for i, edits in enumerate(_mutations()):
        if reference == "paper" and i % 5:  # the published rows are the same every time: a sample is enough
            continue
        rec = _apply(edits)
        file = tmp_path / f"m{i}.json"
        try:
            file.write_text(json.dumps(rec, allow_nan=False))
        except (TypeError, ValueError):
            continue
        if validation.validate(results.load(file)):
            continue
        accepted += 1
        others = [valid_record(model="other", task="covar/hflip"), valid_record(model="other", task="covar/crop")]
        records = [results.load(file), *others]
        try:
            _all_formats(records, reference)
            _all_formats(records[:1], reference)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{edits!r} passed validate but crashed the leaderboard: {exc!r}")
    assert accepted > (10 if reference else 50)  # the loop really exercised the renderers


# ---- 19: published rows -----------------------------------------------------------------------------------
def test_reference_paper_without_own_covar_results_shows_published_rows_in_every_format():
    ca = valid_record(model="m", task="counteranimals/common")
    out = _all_formats([ca], "paper")
    label = "ViT-B/32 256 DataComp-1B (paper, published)"
    assert label in out["table"] and label in out["markdown"]
    assert "may differ from the paper's" in out["table"] and "may differ from the paper's" in out["markdown"]
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    pub = {(r["model"], r["task"], r["metric"]): r for r in rows if r["published"] == "True"}
    assert float(pub[(label, "covar/hflip", "acc1")]["value"]) == pytest.approx(0.552)
    assert float(pub[(label, "covar", "acc1_avg")]["value"]) == pytest.approx(0.445)
    assert any(r["published"] == "False" and r["model"] == "m" for r in rows)
    data = json.loads(out["json"])
    assert any(r["published"] and r["model"] == label for r in data["results"])
    acc = next(t for t in data["tables"] if t["title"].startswith("covar: zero-shot accuracy"))
    assert acc["published_rows"] == list(range(len(acc["rows"]))) and "may differ" in acc["caption"]
    assert any(t["title"].startswith("covar: error diagnosis") for t in data["tables"])


def test_reference_paper_with_no_result_at_all_still_shows_both_papers():
    tables = lb.build_tables([], "paper")
    titles = [t.title for t in tables]
    assert any(t.startswith("covar: zero-shot") for t in titles) and any("official protocol" in t for t in titles)
    assert all(t.published == set(range(len(t.rows))) and t.caption for t in tables)


def test_every_row_is_averaged_over_the_same_subsets():
    recs = [
        valid_record("a", "covar/hflip", 0.5),
        valid_record("a", "covar/crop", 0.7),
        valid_record("b", "covar/hflip", 0.4),
        valid_record("b", "covar/crop", 0.2),
        valid_record("b", "covar/scale", 0.9),
    ]
    acc = lb.build_tables(recs, "paper")[0]
    assert "H-flip, Crop" in acc.title and "average over the subsets present" in acc.title
    rows = {r[0]: r for r in acc.rows}
    assert rows["a"][-1] == "60.0*" and rows["b"][-1] == "30.0*"  # b's scale is not in anyone else's average
    paper = rows["ViT-B/32 256 DataComp-1B (paper, published)"]
    assert paper[-1] == f"{round((55.2 + 59.4) / 2, 1)}*"  # the paper's numbers over the same two subsets
    full = [valid_record("c", f"covar/{s}", 0.5) for s in COVAR_SUBSETS]
    acc = lb.build_tables(full, "paper")[0]
    rows = {r[0]: r for r in acc.rows}
    assert rows["c"][-1] == 50.0 and rows["ViT-B/32 256 DataComp-1B (paper, published)"][-1] == 44.5
    assert "*" not in acc.title and "8 COVAR subsets" in acc.caption


def test_no_reference_leaves_tables_and_formats_as_before():
    full = [valid_record("c", f"covar/{s}", 0.5) for s in ("original", *COVAR_SUBSETS)]
    tables = lb.build_tables(full)
    # without a reference the only caption is the average's interval (issue 14 item 7), never the published one
    assert all((t.caption is None or t.caption.startswith(lb.AVG_INTERVAL_NOTE)) and not t.published for t in tables)
    assert (
        render.render_csv(full).splitlines()[0] == "model,family,task,task_version,metric,value,n_samples,headline,rule"
    )
    assert "published" not in json.loads(render.render_json(full, tables))["results"][0]
