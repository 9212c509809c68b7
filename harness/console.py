"""Terminal output shared by the commands: rich consoles, and tables that never truncate a name or a number."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

WRAP_WIDTH = 40  # columns allowed to wrap (descriptions) get this width at most
# C0 controls except tab/newline, DEL, C1 controls (ESC starts ANSI/OSC-8 sequences; CSI is also U+009B).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(text: Any) -> str:
    """Untrusted text (names, labels, file names, errors, anything read from a result file) made inert for every
    output format: control characters are removed, so no ANSI colour, cursor move or OSC-8 link gets through."""
    return _CONTROL.sub("", "" if text is None else str(text))


def markup(text: Any) -> str:
    """Untrusted text to interpolate into a rich markup string: ``safe`` plus escaped ``[...]`` tags."""
    from rich.markup import escape

    return escape(safe(text))


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _width(text: str) -> int:
    return max((len(line) for line in text.split("\n")), default=0)


def print_rows(
    out, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, wrap: Sequence[str] = (),
    right: Sequence[int] = (), row_styles: Mapping[int, str] | None = None,
) -> None:
    """A rich table whose cells are shown whole: names, specs and numbers never get an ellipsis.

    Columns named in ``wrap`` wrap at ``WRAP_WIDTH``; the table is printed at the width it needs, even when that
    is wider than the terminal (a wrapped terminal line is better than a truncated model name).
    """
    from rich.console import Console
    from rich.table import Table

    cells = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([_width(col)] + [_width(r[i]) for r in cells]) for i, col in enumerate(columns)]
    widths = [min(w, WRAP_WIDTH) if col in wrap else w for w, col in zip(widths, columns)]
    table = Table(title=title, title_justify="left", header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if i in right else "left", no_wrap=col not in wrap,
                         min_width=widths[i], max_width=widths[i] if col in wrap else None)
    for i, row in enumerate(cells):
        table.add_row(*row, style=(row_styles or {}).get(i))
    needed = sum(widths) + 3 * len(columns) + 1
    if needed > out.width:
        out = Console(file=out.file, width=needed, highlight=False, color_system=out.color_system)
    out.print(table)


@contextmanager
def progress_reporter() -> Iterator[Any]:
    """A ``covar_harness.evaluator.Reporter`` drawing rich progress bars on stderr (gone when done)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from covar_harness.evaluator import Reporter

    err = console(stderr=True)
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        yield Reporter(progress, err)
