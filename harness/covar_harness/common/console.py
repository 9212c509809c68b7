"""Terminal output shared by the commands: rich consoles, and tables that never truncate a name or a number."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

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
    from rich.markup import escape

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
    from rich.console import Console

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
    from rich.cells import cell_len

    return max((cell_len(line) for line in text.split("\n")), default=0)  # terminal cells: 猫 is 2 wide


def clip(text: str, width: int) -> str:
    """``text`` on one line and at most ``width`` terminal cells, cut with an ellipsis."""
    from rich.cells import cell_len, set_cell_size

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
) -> None:
    """A rich table whose cells are shown whole: names, specs and numbers never get an ellipsis.

    Columns named in ``wrap`` wrap at ``WRAP_WIDTH``; columns named in ``truncate`` (name -> cells) are cut to
    one line of at most that width with an ellipsis (long error messages: print them whole elsewhere). The
    table is printed at the width it needs, even when that is wider than the terminal (a wrapped terminal line
    is better than a truncated model name). Every title, header and cell is untrusted text: shown literally
    (never as rich markup), with control characters removed.
    """
    from rich.table import Table
    from rich.text import Text

    limits = {i: truncate[c] for i, c in enumerate(columns) if truncate and c in truncate}
    cells = [[_cell_text(v, limits.get(i)) for i, v in enumerate(row)] for row in rows]
    widths = [max([_width(safe(col))] + [_width(r[i]) for r in cells if i < len(r)]) for i, col in enumerate(columns)]
    widths = [min(w, WRAP_WIDTH) if col in wrap else w for w, col in zip(widths, columns)]
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
            min_width=widths[i],
            max_width=widths[i] if col in wrap else None,
        )
    for i, row in enumerate(cells):
        table.add_row(*(Text(c) for c in row), style=(row_styles or {}).get(i))
    needed = sum(widths) + 3 * len(columns) + 1
    if needed > out.width:
        out = console(file=out.file, width=needed, color_system=out.color_system)
    out.print(table)


def _cell_text(value: Any, limit: int | None) -> str:
    text = safe("" if value is None else value)
    return clip(text, limit) if limit is not None else text


def stdout_closed(stream: Any = None) -> int:
    """After ``BrokenPipeError`` (``covar-harness ... | head``): point the closed stream (default stdout) at
    devnull so the interpreter's final flush stays quiet, and return 141 (128 + SIGPIPE), the exit status of a
    tool whose reader went away. Callers return it as the exit code."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, (stream or sys.stdout).fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stream without a real descriptor (tests, embedding)
        pass
    return 141


def write_stdout(text: str) -> None:
    """Write and flush now, so a closed pipe raises ``BrokenPipeError`` here, where the caller handles it."""
    import sys

    sys.stdout.write(text)
    sys.stdout.flush()
