"""Ctrl-C during a run: always stops it (exit 130), wherever SIGINT lands, and DataLoader workers leave it to
the main process. SIGTERM (``kill``, a job scheduler's time limit) is handled the same way, as
:class:`Terminated`, and ends the command with exit 143 and one line: temporary files are cleaned up as on
Ctrl-C, and finished pairs are kept."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM: stops the command as Ctrl-C does (every cleanup that handles Ctrl-C handles it), exit 143."""


def _raise_for(signum: int) -> None:
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def terminate_as_interrupt():
    """For a whole command (``cli.main``): SIGTERM raises :class:`Terminated` in the main thread instead of
    ending the process where it stands (no message, temporary folders left behind); restored after."""

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _raise_for(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Interrupt:
    """Ctrl-C always stops the run (exit 130), wherever SIGINT lands.

    A KeyboardInterrupt can be swallowed (raised inside a ``__del__`` or while DataLoader workers fork) or turn
    into a "worker exited unexpectedly" error that would fail a pair instead. Our handler also sets a flag,
    checked at every batch and pair boundary and before any error is recorded as a pair failure.
    """

    def __init__(self) -> None:
        self.hit = False
        self.signum: int | None = None

    def _handler(self, signum, frame) -> None:
        self.hit, self.signum = True, signum
        _raise_for(signum)

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.hit, self.signum = False, None
        previous = signal.signal(signal.SIGINT, self._handler)
        previous_term = signal.signal(signal.SIGTERM, self._handler)
        previous_hook = sys.unraisablehook

        def unraisable(info) -> None:  # our KeyboardInterrupt raised in a __del__ or weakref callback: the flag
            if not issubclass(info.exc_type, KeyboardInterrupt):  # has it, so no "Exception ignored" traceback
                previous_hook(info)

        sys.unraisablehook = unraisable
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
            sys.unraisablehook = previous_hook
            self.hit = False  # handled: a later run (or a direct evaluate_task call) starts clean

    def check(self) -> None:
        if self.hit:
            _raise_for(self.signum or 0)


INTERRUPT = _Interrupt()  # signal handlers are process-wide, so is this flag


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops the run cleanly; when it does, a worker's
    fd-sharing thread (multiprocessing's resource sharer, which reports through ``sys.excepthook``) finds its
    connection closed mid-handshake (EOFError) or its pipe broken, which is expected then and not worth a
    traceback."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the loader ends its workers with SIGTERM: let it
    default = sys.excepthook

    def quiet_pipes(kind, value, tb):
        if not issubclass(kind, (EOFError, ConnectionError)):
            default(kind, value, tb)

    sys.excepthook = quiet_pipes


@contextmanager
def sigint_deferred():
    """Hold SIGINT back (it is delivered, to the main process, right after); forked workers inherit the block."""

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
