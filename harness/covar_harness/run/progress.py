"""Progress reporters of the evaluator: the base :class:`Reporter` (silent, or drawing on a rich ``Progress``
that :func:`progress_reporter` gives it in a terminal) and :class:`LineReporter`, plain progress lines for
output that is not a terminal. The evaluator only ever talks to a Reporter.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from covar_harness.common.console import clip, console, safe

if TYPE_CHECKING:
    from covar_harness.run.evaluator import PairOutcome

log = logging.getLogger("covar_harness.run.evaluator")


class Reporter:
    """Progress and messages; the CLI gives it a rich Progress, tests and the API a silent one."""

    def __init__(self, progress=None, console=None):
        self.progress, self.console = progress, console

    def task(self, description: str, total: int | None):
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total)

    def advance(self, handle, n: int = 1) -> None:
        if handle is not None:
            self.progress.advance(handle, n)

    def done(self, handle) -> None:
        if handle is not None:
            self.progress.remove_task(handle)

    def say(self, message: str) -> None:
        """``message`` is rich markup: interpolate untrusted values with ``console.markup``."""
        if self.console is not None:
            self.console.print(message)
        else:
            log.info(message)

    def pair_done(self, outcome: PairOutcome) -> None:
        """Called once per pair (done, skipped or failed); the summary table prints them all at the end."""


class LineReporter(Reporter):
    """Progress as plain lines, for output that is not a terminal (CI logs, nohup): one line per pair, and one
    every ``every_s`` seconds of a long pair, with counts and elapsed time, so a log never goes quiet for long."""

    def __init__(self, stream=None, every_s: float = 30.0, total_pairs: int | None = None):
        super().__init__()
        self.stream, self.every_s, self.total_pairs = stream or sys.stderr, every_s, total_pairs
        self.started, self.n_pairs = time.monotonic(), 0
        self._bars: dict[int, list] = {}

    def _line(self, text: str) -> None:
        print(f"[{_clock(time.monotonic() - self.started)}] {safe(text)}", file=self.stream, flush=True)

    def task(self, description: str, total: int | None):
        from rich.text import Text

        handle = len(self._bars) + 1
        self._bars[handle] = [Text.from_markup(description).plain, total, 0, time.monotonic(), time.monotonic()]
        return handle

    def advance(self, handle, n: int = 1) -> None:
        bar = self._bars.get(handle)
        if bar is None:
            return
        bar[2] += n
        if time.monotonic() - bar[4] >= self.every_s:
            bar[4] = time.monotonic()
            of = f"/{bar[1]}" if bar[1] else ""
            self._line(f"{bar[0]}: {bar[2]}{of} in {_clock(bar[4] - bar[3])}")

    def done(self, handle) -> None:
        self._bars.pop(handle, None)

    def say(self, message: str) -> None:
        from rich.text import Text

        self._line(Text.from_markup(message).plain)

    def pair_done(self, outcome: PairOutcome) -> None:
        self.n_pairs += 1
        of = f"/{self.total_pairs}" if self.total_pairs else ""
        name = getattr(outcome, "headline", "acc1")
        acc = outcome.metrics.get(name)
        what = {
            "done": f"done, {name} {100 * acc:.1f}%" if isinstance(acc, (int, float)) else "done",
            "skipped": f"skipped ({outcome.error})" if outcome.error else "skipped",
            "failed": f"failed: {clip(outcome.error, 100)}",
        }[outcome.status]  # in full in the summary
        self._line(f"pair {self.n_pairs}{of}: {outcome.model} x {outcome.task}: {what}")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


@contextmanager
def progress_reporter() -> Iterator[Reporter]:
    """A :class:`Reporter` drawing rich progress bars on stderr (gone when done)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    err = console(stderr=True)
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, transient=True) as progress:
        yield Reporter(progress, err)
