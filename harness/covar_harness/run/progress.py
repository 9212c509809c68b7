"""Progress reporters of the evaluator: the base :class:`Reporter` (silent, or drawing on a rich ``Progress``
that :func:`progress_reporter` gives it in a terminal, with an overall "pair k of N" bar and its ETA) and
:class:`LineReporter`, plain progress lines for output that is not a terminal: every phase announced when it
starts, a line every 30 s while one lasts (from a heartbeat thread, so a slow batch cannot silence it), and one
per pair with the run's ETA. The evaluator only ever talks to a Reporter.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from covar_harness.common.console import clip, console, safe

if TYPE_CHECKING:
    from covar_harness.run.options import PairOutcome

log = logging.getLogger("covar_harness.run.evaluator")


class Reporter:
    """Progress and messages; the CLI gives it a rich Progress, tests a silent one. With ``total_pairs`` and a
    Progress, an overall bar "pair k of N" whose ETA is the run's."""

    def __init__(self, progress=None, console=None, total_pairs: int | None = None):
        self.progress, self.console, self.total_pairs, self.n_pairs = progress, console, total_pairs, 0
        self._pairs = None
        if progress is not None and total_pairs:
            self._pairs = progress.add_task(f"pair 1 of {total_pairs}", total=total_pairs)

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
        self.n_pairs += 1
        if self._pairs is not None and self.total_pairs:
            shown = min(self.n_pairs + 1, self.total_pairs)
            self.progress.update(self._pairs, advance=1, description=f"pair {shown} of {self.total_pairs}")

    def close(self) -> None:
        """The run is over (a LineReporter stops its heartbeat)."""


class LineReporter(Reporter):
    """Progress as plain lines, for output that is not a terminal (CI logs, nohup): a line when a phase starts
    (loading a model, encoding prompts, a pair's images), one every ``every_s`` seconds while it lasts, and one
    per pair with the run's ETA, so a log never goes quiet for long."""

    def __init__(self, stream=None, every_s: float = 30.0, total_pairs: int | None = None):
        super().__init__(total_pairs=total_pairs)
        self.stream, self.every_s = stream or sys.stderr, every_s
        self.started = self.last_line = time.monotonic()
        self._bars: dict[int, list] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _line(self, text: str) -> None:
        with self._lock:
            self.last_line = time.monotonic()
            print(f"[{_clock(self.last_line - self.started)}] {safe(text)}", file=self.stream, flush=True)

    def task(self, description: str, total: int | None):
        name = Text.from_markup(description).plain
        with self._lock:
            handle = len(self._bars) + 1
            while handle in self._bars:
                handle += 1
            self._bars[handle] = [name, total, 0, time.monotonic(), time.monotonic()]
        self._line(f"{name}: {total} to do" if total else f"{name} ...")
        if self._beat is None and self.every_s > 0:
            self._beat = threading.Thread(target=self._heartbeat, name="covar-harness-progress", daemon=True)
            self._beat.start()
        return handle

    def advance(self, handle, n: int = 1) -> None:
        bar = self._bars.get(handle)
        if bar is None:
            return
        bar[2] += n
        if time.monotonic() - bar[4] >= self.every_s:
            self._report(bar)

    def _report(self, bar: list) -> None:
        bar[4] = time.monotonic()
        of = f"/{bar[1]}" if bar[1] else ""
        self._line(f"{bar[0]}: {bar[2]}{of} in {_clock(bar[4] - bar[3])}")

    def _heartbeat(self) -> None:
        """A line every ``every_s`` seconds while a phase lasts and nothing else was said (a slow batch, a model
        download, generated data)."""
        while not self._stop.wait(self.every_s / 4):
            with self._lock:
                quiet = time.monotonic() - self.last_line >= self.every_s
                latest = list(self._bars.values())[-1] if self._bars else None
            if quiet and latest is not None:
                self._report(latest)

    def done(self, handle) -> None:
        with self._lock:
            self._bars.pop(handle, None)

    def close(self) -> None:
        self._stop.set()

    def say(self, message: str) -> None:
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
        left = (self.total_pairs or 0) - self.n_pairs
        eta = f" (eta {_clock((time.monotonic() - self.started) / self.n_pairs * left)})" if left > 0 else ""
        self._line(f"pair {self.n_pairs}{of}: {outcome.model} x {outcome.task}: {what}{eta}")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


@contextmanager
def progress_reporter(total_pairs: int | None = None, terminal: bool | None = None) -> Iterator[Reporter]:
    """A :class:`Reporter` on stderr: in a terminal, rich bars with ETA and, with ``total_pairs``, an overall
    "pair k of N" bar whose ETA is the run's (all gone when done); otherwise a :class:`LineReporter`, so a piped
    or logged run is never silent for long. ``terminal``: force either (default: whether stderr is a terminal).
    """

    if not (sys.stderr.isatty() if terminal is None else terminal):
        lines = LineReporter(total_pairs=total_pairs)
        try:
            yield lines
        finally:
            lines.close()
        return
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
        yield Reporter(progress, err, total_pairs)
