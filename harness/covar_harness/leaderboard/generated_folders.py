"""Folders the harness generates whole (the report site, an export): replaced only when they are ours.

A generated folder carries a marker file. ``--out`` may name a missing folder, an empty one, or one holding
that marker; anything else is refused with one line and left untouched. The new tree is built in a temporary
folder beside ``out`` and renamed into place, so a reader sees the old tree or the new one, never half of each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import one_line


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
