"""``covar-harness report`` (issue 17 item 1) and ``leaderboard --format html`` (item 5), offline, no browser.

The site is built from the tiny demo pipeline (two demo models x two COVAR-Shapes subsets, 24 images, with
``--log-samples`` and ``--save-maps``) plus hand-made hostile result files; checks: the numbers are the
leaderboard's, hover text holds interval and n, untrusted names are escaped everywhere, every referenced file
exists inside the site, no absolute path appears, and ``--help`` stays free of torch and matplotlib.
"""

from __future__ import annotations

import copy
import html
import io
import json
import re
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from html.parser import HTMLParser
from pathlib import Path

import pytest

from covar_harness.common.safe_files import slug
from covar_harness.leaderboard import render
from covar_harness.leaderboard import tables as lb
from covar_harness.results import files as results
from result_records import valid_record

HOSTILE = "<img src=x onerror=alert(1)>[/x]"
HOSTILE_TASK = "fam<script>alert(2)</script>/x\"'"
HOSTILE_FILE = "<svg onload=alert(3)>.png"
DEMO_TASKS = "covar-shapes/original,covar-shapes/bg_varied"
_CACHE: dict[str, tuple[Path, Path, Path]] = {}


def cli(*args: str) -> tuple[int, str, str]:
    from covar_harness.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return int(code or 0), out.getvalue(), err.getvalue()


def demo_results(root: Path, data: Path) -> tuple[Path, Path, Path]:
    """(results, maps, data) of the tiny demo run, made once per session (shared with the browser test);
    hostile result files are added beside the real ones."""
    if "demo" not in _CACHE:
        out, maps = root / "results", root / "maps"
        code, _, err = cli(
            "run",
            "--models",
            "demo",
            "--tasks",
            DEMO_TASKS,
            "--limit",
            "24",
            "--log-samples",
            "--save-maps",
            maps,
            "--output-dir",
            out,
            "--data-dir",
            data,
            "--workers",
            "0",
        )
        assert code == 0, err
        add_hostile(out)
        _CACHE["demo"] = (out, maps, data)
    return _CACHE["demo"]


def add_hostile(out: Path) -> None:
    """A copy of a real result under a hostile model name (with a hostile samples log and notes), a hostile task
    name, and an invalid file with a hostile name."""
    src = out / "demo__shapes-clean" / "covar-shapes__bg_varied.json"
    rec = json.loads(src.read_text())
    rec["model"]["spec"] = rec["model"]["name"] = HOSTILE
    rec["notes"] = [f"note {HOSTILE} <a href='javascript:alert(4)'>x</a>"]
    rec["provenance"]["device"] = "<b>cuda</b>"
    dest = results.result_path(out, HOSTILE, rec["task"]["name"])
    results.write_json(dest, rec)
    rows = [json.loads(line) for line in results.samples_path(src).read_text().splitlines()]
    for row in rows:
        row["file"] = HOSTILE_FILE
    rows.append({"index": "<script>", "correct": "yes"})  # unusable rows are left out, not fatal
    results.samples_path(dest).write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    other = copy.deepcopy(rec)
    other["task"]["name"] = HOSTILE_TASK
    results.write_json(results.result_path(out, HOSTILE, HOSTILE_TASK), other)
    (out / "<b onmouseover=alert(5)>bad.json").write_text("{")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, covar_shapes_data):
    return demo_results(tmp_path_factory.mktemp("report-demo"), covar_shapes_data)


@pytest.fixture(scope="module")
def site(demo, tmp_path_factory):
    out, maps, data = demo
    site = tmp_path_factory.mktemp("site") / "site"
    started = time.perf_counter()
    code, stdout, err = cli("report", out, "--out", site, "--maps", maps, "--data-dir", data)
    assert code == 0, err
    assert "report: " in stdout and time.perf_counter() - started < 60
    assert "skipped invalid result" in err and "<b onmouseover=alert(5)>bad.json" in err
    return site


class Page(HTMLParser):
    """Tables (cell texts, ``<br>`` as a space; cell attributes), every tag's attributes, and the text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self.tables.append({"class": attrs.get("class", ""), "rows": [], "attrs": [], "row_class": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
            self.tables[-1]["attrs"].append([])
            self.tables[-1]["row_class"].append(attrs.get("class", ""))
        elif tag in ("td", "th") and self.tables:
            self._cell = []
            self.tables[-1]["attrs"][-1].append(attrs)
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def leaderboard_tables(page: Page) -> list[dict]:
    return [t for t in page.tables if "leaderboard" in t["class"]]


def expected_cells(table: lb.Table) -> list[list[str]]:
    """The leaderboard's cells as its markdown prints them (unescaped): the terminal's numbers."""
    return [[("-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)) for v in row] for row in table.rows]


def markdown_rows(md: str) -> list[list[str]]:
    rows = []
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [
                c.strip().replace("\\|", "|").replace("&lt;", "<").replace("&gt;", ">")
                for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]
            ]
            rows.append([c[1:-1] if c.startswith("_") and c.endswith("_") else c for c in cells])
    return rows


# ---- numbers ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_site_tables_show_exactly_the_leaderboard_numbers(site, demo):
    page = Page((site / "index.html").read_text())
    records = lb.collect(demo[0]).records
    tables = lb.build_tables(records)
    shown = leaderboard_tables(page)
    assert len(shown) == len(tables) >= 3  # accuracy, diagnosis, the hostile family's generic table
    md = markdown_rows(render.render_markdown(tables))
    headers = {tuple(t.columns) for t in tables}
    md_bodies = [r for r in md if r[0] != "Model" and tuple(r) not in headers]
    site_bodies = []
    for table, html_table in zip(tables, shown):
        header, *body = html_table["rows"]
        assert header == table.columns
        assert body == expected_cells(table)
        site_bodies += body
    assert site_bodies == md_bodies  # the markdown leaderboard, cell for cell
    assert {r[0] for r in shown[0]["rows"][1:]} == {HOSTILE, "demo/shapes-clean", "demo/shapes-shortcut"}


@pytest.mark.slow
def test_cells_carry_interval_and_n_on_hover_and_link_their_pair_page(site, demo):
    page = Page((site / "index.html").read_text())
    acc = leaderboard_tables(page)[0]
    header = acc["rows"][0]
    row = next(i for i, r in enumerate(acc["rows"]) if r[0] == "demo/shapes-clean")
    col = header.index("Bg-varied")
    rec = json.loads((demo[0] / "demo__shapes-clean" / "covar-shapes__bg_varied.json").read_text())
    lo, hi = rec["intervals"]["acc1"]
    value = f"{100 * rec['metrics']['acc1']:.1f}"
    assert (
        acc["attrs"][row][col]["title"]
        == f"{value}% [{100 * lo:.1f}, {100 * hi:.1f}], n=24 (acc1, covar-shapes/bg_varied)"
    )
    assert acc["rows"][row][col] == value
    diag = leaderboard_tables(page)[1]
    col = next(i for i, c in enumerate(diag["rows"][0]) if c.startswith("Bg-varied BG-Er (area, harness rule)"))
    row = next(i for i, r in enumerate(diag["rows"]) if r[0] == "demo/shapes-shortcut")
    assert re.fullmatch(
        r"\d+\.\d% \[\d+\.\d, \d+\.\d\], n=\d+ errors of 24 images \(bg_er, covar-shapes/bg_varied\)",
        diag["attrs"][row][col]["title"],
    )
    links = [a["href"] for tag, a in page.tags if tag == "a" and a.get("href", "").startswith("pairs/")]
    assert "pairs/demo__shapes-clean/covar-shapes__bg_varied.html" in links


# ---- untrusted text ----------------------------------------------------------------------------------------
def _html_files(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


@pytest.mark.slow
def test_hostile_names_show_only_escaped_in_every_page(site):
    files = _html_files(site)
    assert len(files) >= 7  # index + 4 demo pairs + 2 hostile pairs
    seen_escaped = False
    for path in files:
        text = path.read_text()
        for raw in ("<img src=x", "<script>alert", "<svg onload", "<b>cuda</b>", "<b onmouseover", "href='javascript"):
            assert raw not in text, (path, raw)
        seen_escaped |= html.escape(HOSTILE, quote=True) in text
        page = Page(text)
        for tag, attrs in page.tags:
            assert not any(k.startswith("on") for k in attrs), (path, tag, attrs)
            if tag == "script":
                assert set(attrs) == {"src"} and attrs["src"].endswith("assets/report.js")
        assert sum(1 for tag, _ in page.tags if tag == "script") == 1
    assert seen_escaped
    index = Page((site / "index.html").read_text())
    assert HOSTILE in "".join(index.text)  # shown as text
    assert HOSTILE_TASK in "".join(index.text)
    hostile_page = site / results.result_path(Path("pairs"), HOSTILE, "covar-shapes/bg_varied").with_suffix(".html")
    text = "".join(Page(hostile_page.read_text()).text)
    assert HOSTILE_FILE in text and "<b>cuda</b>" in text
    assert "1 line(s) of the log were not usable" not in text  # two bad lines: the bad row and "not json"
    assert "2 line(s) of the log were not usable samples" in text


@pytest.mark.slow
def test_every_referenced_file_is_inside_the_site_and_no_absolute_paths(site, demo):
    out, maps, data = demo
    images = 0
    for path in _html_files(site):
        text = path.read_text()
        for folder in (out, maps, data, site):
            assert str(folder) not in text, (path, folder)
        for tag, attrs in Page(text).tags:
            for key in ("href", "src"):
                ref = attrs.get(key)
                if not ref or ref.startswith("#"):
                    continue
                assert not ref.startswith("/") and ":" not in ref, (path, ref)
                target = (path.parent / ref).resolve()
                assert target.is_file(), (path, ref)
                assert site.resolve() in target.parents
                images += tag == "img"
    assert images >= 10
    assert sorted(str(p.relative_to(site / "plots")) for p in (site / "plots").rglob("*.svg")) == sorted(
        [
            "covar-shapes/accuracy-vs-bg-er.svg",
            "covar-shapes/accuracy.svg",
            "covar-shapes/diagnosis.svg",
            f"{slug(HOSTILE_TASK.split('/')[0])}/accuracy.svg",
        ]
    )
    for name in ("leaderboard.csv", "leaderboard.json", "leaderboard.md", "assets/report.css", "assets/report.js"):
        assert (site / name).is_file()
    records = lb.collect(out).records
    assert (site / "leaderboard.csv").read_text() == render.render_csv(records)
    assert json.loads((site / "leaderboard.json").read_text()) == json.loads(
        render.render_json(records, lb.build_tables(records))
    )


@pytest.mark.slow
def test_gallery_pages_show_overlays_class_names_and_importance_bars(site):
    page_path = site / "pairs" / "demo__shapes-shortcut" / "covar-shapes__bg_varied.html"
    page = Page(page_path.read_text())
    text = "".join(page.text)
    assert "Most background-driven errors" in text and "Most foreground-driven correct decisions" in text
    imgs = [a["src"] for tag, a in page.tags if tag == "img"]
    assert imgs and all(re.fullmatch(r"covar-shapes__bg_varied/\d{6}\.png", s) for s in imgs)
    for src in imgs:
        assert (page_path.parent / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "label" in text and "prediction" in text and "driver" in text and "fg fraction" in text
    assert sum(1 for tag, a in page.tags if tag == "svg" and "bars" in a.get("class", "")) == len(imgs)
    assert "harness version" in text and "data fingerprint" in text and "sha256:" in text
    assert re.search(r"(circle|square|triangle|star|heart|arrow|cross|ring|crescent|hexagon) \(\d\)", text)


# ---- output folder and the command --------------------------------------------------------------------------
def _records_dir(tmp_path: Path, records: list[dict]) -> Path:
    out = tmp_path / "results"
    for rec in records:
        results.write_json(results.result_path(out, rec["model"]["spec"], rec["task"]["name"]), rec)
    return out


def test_out_folder_must_be_new_empty_or_an_earlier_report(tmp_path):
    out = _records_dir(tmp_path, [valid_record(), valid_record(task="covar-shapes/bg_varied", acc1=0.5)])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    code, _, err = cli("report", out, "--out", mine)
    assert code == 2 and "holds no earlier report" in err and len(err.strip().splitlines()) == 1
    assert (mine / "thesis.tex").read_text() == "keep me"
    site = tmp_path / "site"
    assert cli("report", out, "--out", site)[0] == 0
    (site / "stale.html").write_text("old")
    assert cli("report", out, "--out", site, "--gallery", "0")[0] == 0  # an earlier report is replaced whole
    assert not (site / "stale.html").exists() and (site / "index.html").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site.")]  # no temporary folders left
    assert cli("report", tmp_path / "missing", "--out", tmp_path / "x")[0] == 2
    assert cli("report", out, "--out", tmp_path / "y", "--gallery", "-1")[0] == 2


def test_published_rows_counteranimals_plot_and_broken_logs_without_a_run(tmp_path):
    recs = [valid_record(task="covar/hflip"), valid_record(task="covar/bg_varied", acc1=0.5)]
    for group, acc in (("common", 0.8), ("counter", 0.6)):
        rec = valid_record(task=f"counteranimals/{group}", acc1=acc)
        rec["task"]["headline"] = "mean_per_class_recall"
        rec["intervals"]["mean_per_class_recall"] = [acc - 0.05, acc + 0.05]
        recs.append(rec)
    out = _records_dir(tmp_path, recs)
    log = results.samples_path(results.result_path(out, "demo/shapes-clean", "covar/hflip"))
    rows = [
        {
            "index": 0,
            "file": "a.png",
            "label": 1,
            "pred": 2,
            "correct": False,
            "driver": "bg",
            "fg_fraction": 0.1,
            "error_type": "bg",
            "top5": [2, 1],
            "cci": {"importance": [0.5, -0.25, 1e308, "x"], "assignments": [0, 1, 2, 3] * 16},
        },
        {
            "index": 1,
            "label": 1,
            "pred": 1,
            "correct": True,
            "driver": "fg",
            "fg_fraction": 0.9,
            "cci": {"importance": [0.1] * 1000, "assignments": [0]},
        },
        {"index": 2, "correct": False, "driver": "bg", "fg_fraction": "NaN", "cci": None},
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + "[" * 100000 + '\n{"index": -1}\n')
    site = tmp_path / "site"
    code, _, err = cli("report", out, "--out", site, "--reference", "paper")
    assert code == 0, err
    page = Page((site / "index.html").read_text())
    tables = leaderboard_tables(page)
    expected = lb.build_tables(lb.collect(out).records, "paper")
    assert [t["rows"][1:] for t in tables] == [expected_cells(t) for t in expected]
    published = [c for t in tables for c in t["row_class"] if c == "published"]
    assert len(published) == sum(len(t.published) for t in expected) > 0
    assert (site / "plots" / "counteranimals" / "common-vs-counter-official.svg").is_file()
    ca = next(t for t in tables if t["rows"][0][:3] == ["Model", "Common", "Counter"])
    row = ca["rows"].index(next(r for r in ca["rows"] if r[0] == "demo/shapes-clean"))
    assert ca["attrs"][row][1]["title"].startswith("80.0% [75.0, 85.0], n=8 images, 4 classes")
    pair = "".join(Page((site / "pairs" / "demo__shapes-clean" / "covar__hflip.html").read_text()).text)
    assert "3 logged samples" in pair and "2 line(s) of the log were not usable samples" in pair
    assert "cluster 3" in pair and "class 2" in pair  # no class names known: ids


def test_leaderboard_format_html_is_one_self_contained_page(tmp_path):
    hostile = valid_record(model=HOSTILE, task="covar/hflip")
    out = _records_dir(tmp_path, [valid_record(task="covar/hflip"), hostile])
    code, stdout, err = cli("leaderboard", out, "--format", "html", "--reference", "paper")
    assert code == 0, err
    assert "<img src=x" not in stdout and html.escape(HOSTILE, quote=True) in stdout
    page = Page(stdout)
    assert not [a for tag, a in page.tags if tag in ("link", "img") or (tag == "script" and "src" in a)]
    csp = next(a["content"] for tag, a in page.tags if a.get("http-equiv") == "Content-Security-Policy")
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    tables = lb.build_tables(lb.collect(out).records, "paper")
    assert [t["rows"][1:] for t in leaderboard_tables(page)] == [expected_cells(t) for t in tables]
    assert cli("leaderboard", out, "--format", "markdown")[1] == render.render_markdown(
        lb.build_tables(lb.collect(out).records)
    )


def test_help_and_leaderboard_stay_free_of_torch_and_matplotlib():
    code = (
        "import sys, contextlib, io\nfrom covar_harness.cli.main import main\n"
        "for argv in (['--help'], ['report', '--help'], ['leaderboard', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: main(argv)\n"
        "        except SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
