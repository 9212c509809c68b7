"""Terminal output shared by the commands: rich consoles, and tables that never truncate a name or a number."""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

WRAP_WIDTH = 40  # columns allowed to wrap (descriptions) get this width at most
# C0 controls except tab/newline, DEL, C1 controls (ESC starts ANSI/OSC-8 sequences; CSI is also U+009B), the
# Unicode line/paragraph separators, bidi embeddings/overrides/isolates (text that displays as another name) and
# lone surrogates (cannot be encoded: printing one raises UnicodeEncodeError).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAME_CONTROL = re.compile("[\t\n]|" + _CONTROL.pattern)


def safe(text: Any) -> str:
    """Untrusted text (names, labels, file names, errors, anything read from a result file) made inert for every
    output format: control characters are removed, so no ANSI colour, cursor move or OSC-8 link gets through."""
    return _CONTROL.sub("", "" if text is None else str(text))


def markup(text: Any) -> str:
    """Untrusted text to interpolate into a rich markup string: ``safe`` plus escaped ``[...]`` tags."""

    return escape(safe(text))


def unsafe_text(text: str) -> bool:
    """True when ``text`` holds characters ``safe`` would remove (a free-text line may hold tabs and newlines)."""
    return _CONTROL.search(text) is not None


def unsafe_name(text: str) -> bool:
    """True when ``text`` cannot be a name: anything ``unsafe_text`` refuses, tabs and line breaks, invisible
    format characters (Unicode category Cf: zero-width space and joiners, LRM / RLM / ALM, word joiner, BOM,
    soft hyphen, tag characters) and white space at either end: two names that print the same are one name."""
    if _NAME_CONTROL.search(text) is not None or text != text.strip():
        return True
    return any(unicodedata.category(c) == "Cf" for c in text)


def one_line(text: Any) -> str:
    """``safe`` text on one line (newlines and tabs become spaces): for messages about untrusted input."""
    return safe(text).replace("\n", " ").replace("\t", " ")


def inert(obj: Any) -> Any:
    """``safe`` applied to every string (and key) of JSON-like data: for JSON output of untrusted text."""
    if isinstance(obj, str):
        return safe(obj)
    if isinstance(obj, dict):
        return {inert(k): inert(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [inert(v) for v in obj]
    return obj


@cache
def _console_class():
    class QuietPipeConsole(Console):
        """A rich console that ends the program quietly with 141 when its reader goes away (``| head``)."""

        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise SystemExit(stdout_closed(self.file))

    return QuietPipeConsole


def console(stderr: bool = False, **kwargs: Any):
    """A rich console without auto-highlighting; a closed pipe ends the program quietly (exit 141)."""
    return _console_class()(stderr=stderr, highlight=False, **kwargs)


def _width(text: str) -> int:
    return max((cell_len(line) for line in text.split("\n")), default=0)  # terminal cells: 猫 is 2 wide


def clip(text: str, width: int) -> str:
    """``text`` on one line and at most ``width`` terminal cells, cut with an ellipsis."""

    text = " ".join(text.split())
    return text if cell_len(text) <= width else set_cell_size(text, max(width - 1, 0)).rstrip() + "…"


def print_rows(
    out,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    wrap: Sequence[str] = (),
    right: Sequence[int] = (),
    row_styles: Mapping[int, str] | None = None,
    truncate: Mapping[str, int] | None = None,
    caption: str | None = None,
    fit: bool = False,
) -> None:
    """A rich table whose cells are shown whole: names, specs and numbers never get an ellipsis.

    Columns named in ``wrap`` wrap at ``WRAP_WIDTH``; columns named in ``truncate`` (name -> cells) are cut to
    one line of at most that width with an ellipsis (long error messages: print them whole elsewhere). Without
    ``fit`` the table is printed at the width it needs, even when that is wider than the terminal (a wrapped
    terminal line is better than a truncated model name). With ``fit`` (the leaderboard) a table wider than the
    terminal is folded: the first column is repeated and the others are split over as many tables as needed;
    when even one value column does not fit beside the first, it is printed in long format (one row per
    value). Every title, header and cell is untrusted text: shown literally (never as rich markup), with
    control characters removed.
    """
    limits = {i: truncate[c] for i, c in enumerate(columns) if truncate and c in truncate}
    cells = [[_cell_text(v, limits.get(i)) for i, v in enumerate(row)] for row in rows]
    widths = [max([_width(safe(col))] + [_width(r[i]) for r in cells if i < len(r)]) for i, col in enumerate(columns)]
    widths = [min(w, WRAP_WIDTH) if col in wrap else w for w, col in zip(widths, columns)]
    styles = row_styles or {}
    if fit and _needed(widths) > out.width and len(columns) > 1:
        _print_folded(out, title, list(columns), cells, widths, right, styles, caption)
        return
    _print_table(out, title, columns, cells, widths, wrap, right, styles, caption)


def _needed(widths: Sequence[int]) -> int:
    """Terminal cells a rich table of these column widths takes: one space of padding each side, n+1 rules."""
    return sum(widths) + 3 * len(widths) + 1


def _print_folded(out, title, columns, cells, widths, right, styles, caption) -> None:
    """The table in pieces that fit ``out.width``: the first column, then as many others as fit, repeated."""
    chunks: list[list[int]] = []
    for i in range(1, len(columns)):
        if chunks and _needed([widths[0], *(widths[j] for j in chunks[-1]), widths[i]]) <= out.width:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    if any(_needed([widths[0], *(widths[j] for j in chunk)]) > out.width for chunk in chunks):
        _print_long(out, title, columns, cells, right, styles, caption)
        return
    for n, chunk in enumerate(chunks, 1):
        keep = [0, *chunk]
        part = f"{title} ({n}/{len(chunks)}: {', '.join(' '.join(columns[j].split()) for j in chunk)})"
        sub = [[row[j] if j < len(row) else "" for j in keep] for row in cells]
        right_here = [k for k, j in enumerate(keep) if j in right]
        _print_table(out, part, [columns[j] for j in keep], sub, [widths[j] for j in keep], (), right_here, styles,
                     caption if n == len(chunks) else None)  # fmt: skip


def _print_long(out, title, columns, cells, right, styles, caption) -> None:
    """One row per (first-column value, column, value): three narrow columns; the first wraps if it must."""
    head = columns[0]
    long_cols = [head, "column", "value"]
    rows: list[list[str]] = []
    long_styles: dict[int, str] = {}
    for i, row in enumerate(cells):
        for j in range(1, len(columns)):
            if i in styles:
                long_styles[len(rows)] = styles[i]
            rows.append([row[0] if row else "", " ".join(columns[j].split()), row[j] if j < len(row) else ""])
    widths = [max([_width(c)] + [_width(r[k]) for r in rows]) for k, c in enumerate(long_cols)]
    room = max(out.width - _needed([0, widths[1], widths[2]]), 8)
    wrap = (head,) if widths[0] > room else ()
    widths[0] = min(widths[0], room)
    _print_table(out, f"{title} (long format: the table is wider than the terminal)", long_cols, rows, widths,
                 wrap, [2], long_styles, caption, max_first=room)  # fmt: skip


def _print_table(out, title, columns, cells, widths, wrap, right, styles, caption, max_first=None) -> None:
    table = Table(
        title=Text(safe(title)),
        title_justify="left",
        header_style="bold",
        caption=Text(safe(caption)) if caption else None,
        caption_justify="left",
    )
    for i, col in enumerate(columns):
        table.add_column(
            Text(safe(col)),
            justify="right" if i in right else "left",
            no_wrap=col not in wrap,
            overflow="fold",  # a wrapped name without spaces is folded, never cut with an ellipsis
            min_width=widths[i],
            max_width=widths[i] if col in wrap else None,
        )
    for i, row in enumerate(cells):
        table.add_row(*(Text(c) for c in row), style=styles.get(i))
    needed = _needed(widths)
    if needed > out.width and max_first is None:
        out = console(file=out.file, width=needed, color_system=out.color_system)
    out.print(table)


def _cell_text(value: Any, limit: int | None) -> str:
    text = safe("" if value is None else value)
    return clip(text, limit) if limit is not None else text


def stdout_closed(stream: Any = None) -> int:
    """After ``BrokenPipeError`` (``covar-harness ... | head``): point the closed stream (default stdout) at
    devnull so the interpreter's final flush stays quiet, and return 141 (128 + SIGPIPE), the exit status of a
    tool whose reader went away. Callers return it as the exit code."""

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (stream or sys.stdout).fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stream without a real descriptor (tests, embedding)
        pass
    return 141


def write_stdout(text: str) -> None:
    """Write and flush now, so a closed pipe raises ``BrokenPipeError`` here, where the caller handles it."""

    sys.stdout.write(text)
    sys.stdout.flush()
