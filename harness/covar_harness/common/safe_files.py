"""Safe file reading: open a file only when it is a regular file under a size cap for its kind.

A FIFO, device, socket or folder where a file was expected fails with :class:`NotRegularFile` instead of hanging
the run; a file over its cap fails with :class:`FileTooLarge` instead of exhausting memory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

METADATA_MAX_BYTES = 1 << 30  # metadata.jsonl: ~3 million samples; more is a mistake or an attack
SMALL_FILE_MAX_BYTES = 64 << 20  # classes.json, build.json, name lists, manifests


class NotRegularFile(OSError):
    """A FIFO, device, socket or folder where a file was expected: reading it could hang or never end."""


class FileTooLarge(OSError):
    """A file over the size cap for its kind: reading it whole could exhaust memory."""


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def open_regular(path: str | Path, max_bytes: int | None = None) -> IO[bytes]:
    """Open ``path`` for binary reading only when it is a regular file (under ``max_bytes``).

    Opened non-blocking and checked on the open descriptor, so a FIFO can neither hang the open nor be swapped
    in between the check and the read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path} is {_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise FileTooLarge(f"{path} is {st.st_size} bytes, over the {max_bytes}-byte limit for this file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_text_capped(path: str | Path, max_bytes: int = SMALL_FILE_MAX_BYTES, errors: str = "strict") -> str:
    """A small UTF-8 text file, read only when it is a regular file under ``max_bytes`` (else OSError)."""
    with open_regular(path, max_bytes) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the size check
        raise FileTooLarge(f"{path} is over the {max_bytes}-byte limit for this file")
    return data.decode("utf-8", errors)
