"""Terminal output shared by the commands: rich consoles, and tables that never truncate a name or a number."""

from __future__ import annotations


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def print_table(out, table) -> None:
    """Print a rich table at the width its unwrappable cells need, even beyond the terminal's width.

    Columns created with ``no_wrap=True`` (names, specs, numbers) are then shown whole; other columns wrap.
    """
    from rich.console import Console
    from rich.measure import Measurement

    needed = Measurement.get(out, out.options.update(width=10_000, max_width=10_000), table).minimum
    if needed > out.width:
        out = Console(file=out.file, width=needed, highlight=False, color_system=out.color_system)
    out.print(table)
