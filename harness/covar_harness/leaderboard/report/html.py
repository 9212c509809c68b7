"""HTML building blocks of the report: escaping, the page frame, and the leaderboard tables.

Every string that may come from a result file (model, task and class names, file names, notes, provenance) goes
through :func:`esc` (control characters removed, then ``html.escape`` with ``quote=True``) before it lands in a
page, in text or in an attribute. Scripts and styles are our own static files; links and image sources are
built from slugs (``safe_files.slug``) and numbers only. The same table code renders the site's index and
``leaderboard --format html``, so both show the numbers of the terminal leaderboard exactly.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources as _res
from typing import Any

from covar_harness import __version__
from covar_harness.common.console import one_line, safe
from covar_harness.data.subsets import SUBSET_TITLES
from covar_harness.leaderboard import tables as lb
from covar_harness.leaderboard.render import cell, header_lines
from covar_harness.results import files as results

ASSETS = ("report.css", "report.js")
# Site pages load only our own files; the single page carries its CSS and JS inline, allowed by hash.
SITE_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'"
)


def esc(text: Any) -> str:
    """Untrusted text for HTML text or a quoted attribute value: control characters removed, ``& < > " '``
    escaped."""
    return html.escape(safe(text), quote=True)


def esc1(text: Any) -> str:
    """``esc`` on one line (titles, attributes)."""
    return html.escape(one_line(text), quote=True)


def asset_text(name: str) -> str:
    return (_res.files("covar_harness") / "resources" / "report" / name).read_text(encoding="utf-8")


def pct(value: Any, digits: int = 1) -> str:
    return f"{100.0 * value:.{digits}f}" if results.is_number(value) else "-"


def page(title: str, body: str, *, root: str = "", inline: bool = False, subtitle: str = "") -> str:
    """A whole HTML document. ``root``: the relative path from the page to the site root (``""`` or
    ``"../../"``); ``inline``: CSS and JS inside the page (the single-page leaderboard), allowed by hash."""
    if inline:
        css, js = asset_text("report.css"), asset_text("report.js")
        csp = (
            f"default-src 'none'; img-src data:; style-src {_sha(css)}; script-src {_sha(js)}; "
            "base-uri 'none'; form-action 'none'"
        )
        head = f"<style>{css}</style>\n<script>{js}</script>"
    else:
        csp = SITE_CSP
        head = f'<link rel="stylesheet" href="{root}assets/report.css">\n<script src="{root}assets/report.js"></script>'
    sub = f"<p>{subtitle}</p>" if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{esc1(title)}</title>\n{head}\n</head>\n<body>\n"
        f'<header class="top"><h1>{esc1(title)}</h1>{sub}</header>\n{body}\n</body>\n</html>\n'
    )


def _sha(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# ---- where a table cell's number comes from (for its hover text and its link) ---------------------------
@dataclass
class Source:
    record: dict
    metric: str


_TITLE_SUBSET = {title: subset for subset, title in SUBSET_TITLES.items()}
# a diagnosis column's title after its subset -> the metric (titles from ``leaderboard.diag_titles``: "BG-Er (area,
# harness rule)", "BG-Er p vs null", ...); matched by prefix, since BG-Er / Fine-Er carry their rule's name
_DIAG_METRICS = {
    "BG-Er p vs null": "bg_er_null_p",
    "BG-Er (": "bg_er",
    "Fine-Er (": "fine_er",
    "bg-sufficient": "bg_sufficient_rate",
}
_CA_METRICS = {
    "Common": ("common", "mean_per_class_recall"),
    "Counter": ("counter", "mean_per_class_recall"),
    "Common acc1": ("common", "acc1"),
    "Counter acc1": ("counter", "acc1"),
}


class Sources:
    """Finds the result record and metric behind a cell of a leaderboard table, from the table's title, the
    column name and the row's model. Unknown layouts give no source (the cell just has no hover text)."""

    def __init__(self, records: list[dict]):
        self.index: dict[tuple[str, str], dict] = {}
        for r in records:  # the last file of a (model, task) wins, as in the leaderboard
            self.index[(r["model"]["spec"], r["task"]["name"])] = r
        self.families = sorted({r["task"]["name"].split("/", 1)[0] for r in records}, key=len, reverse=True)

    def family(self, table: lb.Table) -> str | None:
        return next((f for f in self.families if table.title.startswith(f + ": ")), None)

    def find(self, table: lb.Table, family: str | None, column: str, spec: Any) -> Source | None:
        if family is None or not isinstance(spec, str):
            return None

        def rec(sub: str) -> dict | None:
            return self.index.get((spec, f"{family}/{sub}"))

        for suffix, title in lb.CA_VARIANTS:
            if table.title.startswith(f"{family}: {title}:") and column in _CA_METRICS:
                group, metric = _CA_METRICS[column]
                r = rec(group + suffix)
                return Source(r, metric) if r else None
        subset = _TITLE_SUBSET.get(column, column)
        r = rec(subset)
        if r is not None:
            return Source(r, r["task"].get("headline") or "acc1")
        for title, subset in _TITLE_SUBSET.items():
            for label, metric in _DIAG_METRICS.items():
                if column.startswith(f"{title} {label}") and (r := rec(subset)) is not None:
                    return Source(r, metric)
        return None


def hover(src: Source, shown: str) -> str:
    """``94.2% [90.8, 97.1], n=240``: the value, its bootstrap interval and what it was measured on."""
    rec, metric = src.record, src.metric
    interval = rec.get("intervals", {}).get(metric)
    if metric.endswith("_p"):  # a p-value: a probability, not a share of anything
        return (
            f"p = {shown}, one-sided against the rule's permutation null ({safe(metric)}, {safe(rec['task']['name'])})"
        )
    text = f"{shown}%"
    if isinstance(interval, list) and len(interval) == 2 and all(results.is_number(v) for v in interval):
        text += f" [{pct(interval[0])}, {pct(interval[1])}]"
    n = rec["task"].get("n_samples")
    if metric.startswith(("bg_er", "fine_er", "bg_sufficient")):
        errors = n_errors(rec)
        text += f", n={errors} errors of {n} images" if errors is not None else f", n={n} images"
    else:
        text += f", n={n}"
        if metric == "mean_per_class_recall":
            text += f" images, {rec['task'].get('n_classes')} classes"
    return f"{text} ({safe(metric)}, {safe(rec['task']['name'])})"


def n_errors(rec: dict) -> int | None:
    diag = rec.get("config", {}).get("diagnosis")
    if not isinstance(diag, dict):
        return None
    rules, by_rule = diag.get("rules"), diag.get("by_rule")
    if not (isinstance(rules, list) and rules and isinstance(by_rule, dict)):
        return None
    value = by_rule.get(rules[0], {}).get("n_errors") if isinstance(by_rule.get(rules[0]), dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---- tables ---------------------------------------------------------------------------------------------
_SPECIAL = {
    "Avg": "mean over the subsets named in the table title",
    "Drop": "Common minus Counter (class-balanced accuracy, percentage points)",
}


def render_tables(tables: list[lb.Table], records: list[dict], link: Callable[[dict], str | None] | None = None) -> str:
    """The leaderboard tables as sortable HTML tables; ``link(record)``: the href of a cell's pair page."""
    sources = Sources(records)
    out = []
    for n, table in enumerate(tables):
        family = sources.family(table)
        numeric = [
            i > 0 and all(not isinstance(r[i], str) or _number(r[i]) is not None for r in table.rows)
            for i in range(len(table.columns))
        ]
        head = "".join(
            f'<th scope="col" data-type="{"num" if numeric[i] else "text"}">{_header(c, i)}</th>'
            for i, c in enumerate(table.columns)
        )
        rows = []
        for i, row in enumerate(table.rows):
            published = i in table.published
            cells = []
            for j, value in enumerate(row):
                shown = cell(value)
                if j == 0:
                    title = ' title="published figure, not a result of this harness"' if published else ""
                    cells.append(f'<th scope="row" class="text"{title}>{esc(shown)}</th>')
                    continue
                attrs = ""
                number = _number(value)
                if number is not None:
                    attrs += f' data-v="{number:.6g}"'
                if value is None:
                    attrs += ' class="missing"'
                src = None if published else sources.find(table, family, table.columns[j], row[0])
                tip = hover(src, shown) if src and value is not None else _SPECIAL.get(table.columns[j])
                if tip and value is not None:
                    attrs += f' title="{esc1(tip)}"'
                href = link(src.record) if (src and link and value is not None) else None
                body = f'<a href="{esc(href)}">{esc(shown)}</a>' if href else esc(shown)
                cells.append(f"<td{attrs}>{body}</td>")
            cls = ' class="published"' if published else ""
            rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
        caption = f'<p class="caption">{esc(table.caption)}</p>' if table.caption else ""
        out.append(
            f'<h3 id="table-{n + 1}">{esc(table.title)}</h3>\n<div class="scroll">'
            f'<table class="sortable leaderboard"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n" + "\n".join(rows) + f"\n</tbody></table></div>\n{caption}"
        )
    if any(t.published for t in tables):
        out.append(
            '<div class="legend"><span><span class="swatch sw-pub"></span>published figures (marked, '
            "italic): not results of this harness</span></div>"
        )
    return "\n".join(out)


def _header(column: str, i: int) -> str:
    """A column name on two lines (as the terminal table), so wide tables stay readable: "H-flip BG-Er",
    "H-flip BG-Er (area, harness rule)" breaks before the parenthesis."""
    head, tail = header_lines(str(column))
    return f"{esc(head)}<br>{esc(tail)}" if i > 0 and tail else esc(column)


def _number(value: Any) -> float | None:
    """The number a cell sorts by: floats and ints, and the leaderboard's ``"73.0*"`` partial averages."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if results.is_number(value) else None
    if isinstance(value, str) and value.endswith("*"):
        try:
            number = float(value[:-1])
        except ValueError:
            return None
        return number if results.is_number(number) else None
    return None


def leaderboard_page(
    records: list[dict],
    tables: list[lb.Table],
    invalid: Iterable[tuple[Any, str]] = (),
    title: str = "covar-harness leaderboard",
) -> str:
    """``leaderboard --format html``: one self-contained page (CSS and JS inline), sortable, with hover text."""

    body = render_tables(tables, records) or '<p class="note">No tables.</p>'
    skipped = skipped_list(invalid)
    return page(
        title,
        f"<main>\n{body}\n{skipped}\n</main>\n<footer>covar-harness {esc(__version__)}: "
        f"{len(records)} result file(s)</footer>",
        inline=True,
        subtitle="Hover a number for its 95% interval and sample count; click a header to sort.",
    )


def skipped_list(invalid: Iterable[tuple[Any, str]], base: Any = None) -> str:
    """Skipped files, each with its one-line reason; paths relative to ``base`` when under it (no absolute
    paths in a published page)."""
    items = []
    for path, why in invalid:
        name = str(path)
        if base is not None:
            try:
                name = str(path.relative_to(base))
            except (ValueError, AttributeError):
                name = getattr(path, "name", name)
        items.append(f"<li><code>{esc1(name)}</code>: {esc1(why)}</li>")
    if not items:
        return ""
    return (
        f'<h2 id="skipped">Skipped files ({len(items)})</h2>\n<p class="note">Not valid result files; '
        f'nothing from them is shown.</p>\n<ul class="skipped">{"".join(items)}</ul>'
    )
