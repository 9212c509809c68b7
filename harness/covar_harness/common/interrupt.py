"""Ctrl-C during a run: always stops it (exit 130), wherever SIGINT lands, and DataLoader workers leave it to
the main process."""

from __future__ import annotations

import sys
from contextlib import contextmanager


class _Interrupt:
    """Ctrl-C always stops the run (exit 130), wherever SIGINT lands.

    A KeyboardInterrupt can be swallowed (raised inside a ``__del__`` or while DataLoader workers fork) or turn
    into a "worker exited unexpectedly" error that would fail a pair instead. Our handler also sets a flag,
    checked at every batch and pair boundary and before any error is recorded as a pair failure.
    """

    def __init__(self) -> None:
        self.hit = False

    def _handler(self, signum, frame) -> None:
        self.hit = True
        raise KeyboardInterrupt

    @contextmanager
    def installed(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.hit = False
        previous = signal.signal(signal.SIGINT, self._handler)
        previous_hook = sys.unraisablehook

        def unraisable(info) -> None:  # our KeyboardInterrupt raised in a __del__ or weakref callback: the flag
            if not issubclass(info.exc_type, KeyboardInterrupt):  # has it, so no "Exception ignored" traceback
                previous_hook(info)

        sys.unraisablehook = unraisable
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = previous_hook
            self.hit = False  # handled: a later run (or a direct evaluate_task call) starts clean

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt


INTERRUPT = _Interrupt()  # signal handlers are process-wide, so is this flag


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops the run cleanly; when it does, a worker's
    fd-sharing thread finds its pipe closed, which is expected then and not worth a traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default = sys.excepthook

    def quiet_pipes(kind, value, tb):
        if not issubclass(kind, (BrokenPipeError, ConnectionResetError)):
            default(kind, value, tb)

    sys.excepthook = quiet_pipes


@contextmanager
def sigint_deferred():
    """Hold SIGINT back (it is delivered, to the main process, right after); forked workers inherit the block."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
