"""Folders the harness generates whole (the report site, an export): replaced only when they are ours.

A generated folder carries a marker file. ``--out`` may name a missing folder, an empty one, or one holding
that marker; anything else is refused with one line and left untouched. The new tree is built in a temporary
folder beside ``out`` and renamed into place, so a reader sees the old tree or the new one, never half of each.
A build that is interrupted (Ctrl-C, SIGTERM, an error) removes its temporary folder; one that was killed
(``kill -9``) leaves it, and the next build beside the same ``out`` removes it: a live build holds an ``flock``
on its folder, so only abandoned ones are taken.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: killed builds' folders are only removed once they are an hour old
    fcntl = None  # type: ignore[assignment]

from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import one_line
from covar_harness.common.safe_files import umask_mode

STALE_S = 60.0  # a leftover folder younger than this may belong to a build that has not locked it yet


def check_out(out: Path, marker: str, what: str) -> None:
    """``out`` must be missing, empty, or an earlier ``what`` (it holds ``marker``); else a one-line UsageError."""
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out {one_line(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise UsageError(
            f"--out {one_line(out)!r} is a non-empty folder that holds no earlier {what}; "
            "choose an empty or new folder (nothing is deleted)"
        )


def swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished tree ``tmp`` to ``out``; an earlier generated ``out`` is moved aside, then removed."""
    old = None
    if out.is_dir():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def building(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to build the new tree in (the caller ends with ``swap_in``), with the
    mode ``mkdir`` would give it, locked while this process builds; removed on any exception. Folders that
    killed builds left beside ``out`` are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tmp.chmod(umask_mode(0o777))
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def _remove_abandoned(out: Path) -> None:
    """Remove ``.<out>.new-*`` and ``.<out>.old-*`` folders that no live build holds (and older than a minute)."""
    name = glob.escape(out.name)
    for folder in [*out.parent.glob(f".{name}.new-*"), *out.parent.glob(f".{name}.old-*")]:
        try:
            if not folder.is_dir() or folder.is_symlink() or time.time() - folder.stat().st_mtime < STALE_S:
                continue
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            elif time.time() - folder.stat().st_mtime < 3600:
                continue
        except OSError:
            continue  # a live build holds it
        finally:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
