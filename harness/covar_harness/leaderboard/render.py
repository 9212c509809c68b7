"""The leaderboard's renderers: tables (:class:`~covar_harness.leaderboard.tables.Table`) as markdown or a rich table,
result records as csv or json (the long format of :func:`~covar_harness.leaderboard.tables.long_records`)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from covar_harness.common.console import one_line, print_rows, safe
from covar_harness.leaderboard.faithfulness import long_rows
from covar_harness.leaderboard.readers import Table
from covar_harness.leaderboard.tables import LONG_FIELDS, average_records, long_records
from covar_harness.results import files as results


# ---- renderers -----------------------------------------------------------------------------------------
# Every string here may come from a result file: ``safe`` removes control characters in every format, and
# each format escapes what it gives meaning to (rich markup, markdown pipes and HTML, spreadsheet formulas).
def cell(v: Any) -> str:
    """A table value as every leaderboard format shows it: ``-`` for none, one decimal for floats."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return safe(v)


def _md(text: Any) -> str:
    """One markdown table cell: one line, ``|`` escaped, no raw HTML."""
    return one_line(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render_markdown(tables: list[Table]) -> str:
    out = []
    for t in tables:
        out.append(f"### {_md(t.title)}\n")
        out.append("| " + " | ".join(_md(c) for c in t.columns) + " |")
        out.append("|" + "|".join("---" for _ in t.columns) + "|")
        for i, row in enumerate(t.rows):
            cells = [_md(cell(v)) for v in row]
            if i in t.published:
                cells[0] = f"_{cells[0]}_"
            out.append("| " + " | ".join(cells) + " |")
        if t.caption:
            out.append(f"\n{_md(t.caption)}")
        out.append("")
    return "\n".join(out)


def header_lines(column: str) -> tuple[str, str]:
    """A wide column's title in two lines: before a parenthesis ("Bg-varied BG-Er" / "(area, harness rule)"),
    else at its last space ("H-flip" / "BG-Er"); ("title", "") when it has neither."""
    if " (" in column:
        head, tail = column.split(" (", 1)
        return head, "(" + tail
    head, _, tail = column.rpartition(" ")
    return (head, tail) if head else (column, "")


def render_rich(tables: list[Table], console) -> None:
    for t in tables:  # "H-flip BG-Er" -> two header lines: wide tables stay readable
        columns = [c if i == 0 else "\n".join(x for x in header_lines(c) if x) for i, c in enumerate(t.columns)]
        rows = [[cell(v) for v in row] for row in t.rows]
        print_rows(
            console,
            t.title,
            columns,
            rows,
            right=range(1, len(columns)),
            row_styles={i: "dim italic" for i in t.published},
            caption=t.caption,
            fit=True,  # folded (first column repeated) or long format: never wider than the terminal
        )


def _csv_value(value: Any) -> Any:
    """Strings made inert for spreadsheets: no control characters, and a leading ``= + - @`` (a formula)
    gets an apostrophe. Numbers are left alone (a negative number is not a formula)."""
    if not isinstance(value, str):
        return value
    text = safe(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _faithfulness_rows(faithfulness: Any, reference: str | None) -> list[dict]:
    """Faithfulness results in the long format (``faithfulness/<method>/<metric>``; own rows, never published)."""

    rows = long_rows(list(faithfulness))
    return [{**row, "published": False} for row in rows] if reference == "paper" else rows


def render_csv(records: list[dict], reference: str | None = None, faithfulness: Any = ()) -> str:

    rows = long_records(records, reference) + _faithfulness_rows(faithfulness, reference)
    buf = io.StringIO()
    fields = LONG_FIELDS + (["published"] if reference == "paper" else [])
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows + _csv_averages(records, reference))
    return buf.getvalue()


def _csv_averages(records: list[dict], reference: str | None) -> list[dict]:
    """The averages' rows for csv: ``acc1_avg`` and its interval as ``acc1_avg_ci_low`` / ``acc1_avg_ci_high``."""

    out = []
    for row in average_records(records, reference):
        interval = row.pop("interval") or [None, None]
        out += [row] + [
            {**row, "metric": f"acc1_avg_ci_{end}", "value": v} for end, v in zip(("low", "high"), interval)
        ]
    return out


def _clean(obj: Any) -> Any:
    """JSON-ready and inert: ``safe`` strings, non-finite numbers as null."""
    if isinstance(obj, str):
        return safe(obj)
    if isinstance(obj, dict):
        return {safe(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_clean(v) for v in obj]
    return results.jsonable(obj)


def render_json(records: list[dict], tables: list[Table], reference: str | None = None, faithfulness: Any = ()) -> str:

    tables_out = []
    for t in tables:
        entry = {"title": t.title, "columns": t.columns, "rows": t.rows, "published_rows": sorted(t.published)}
        if t.caption:
            entry["caption"] = t.caption
        tables_out.append(entry)
    rows = long_records(records, reference) + average_records(records, reference)
    rows += _faithfulness_rows(faithfulness, reference)
    data = _clean({"results": rows, "tables": tables_out})
    return json.dumps(data, indent=2, allow_nan=False)
