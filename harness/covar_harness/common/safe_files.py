"""Safe file reading: open a file only when it is a regular file under a size cap for its kind.

A FIFO, device, socket or folder where a file was expected fails with :class:`NotRegularFile` instead of hanging
the run; a file over its cap fails with :class:`FileTooLarge` instead of exhausting memory.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO, Any

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


# ---- JSON: the one bounded reader for every data file (results, metadata.jsonl, captions, manifests) --------
JSON_MAX_DEPTH = 64  # data and result files nest a few levels; a deeper one is a mistake or an attack


class JsonFormatError(ValueError):
    """A JSON file or line that cannot be used: not JSON, nested too deeply, or a field of the wrong type.
    The message is one line naming where (``file``, ``file:line``, ``file: images[3]``)."""


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def json_depth(obj: Any) -> int:
    """Nesting depth, iteratively (a recursive walk could itself overflow the stack)."""
    if not isinstance(obj, (dict, list)):
        return 0
    deepest, stack = 1, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_json(text: str | bytes, where: str, max_depth: int = JSON_MAX_DEPTH, constants: bool = True) -> Any:
    """JSON text, bounded: nested at most ``max_depth`` levels (deeper input raises before it can exhaust the
    stack), NaN / Infinity refused unless ``constants``. Any problem is one :class:`JsonFormatError` line,
    prefixed with ``where`` (file, file:line) when given."""
    at = f"{where}: " if where else ""
    try:
        if constants:
            obj = json.loads(text)
        else:
            obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise JsonFormatError(f"{at}JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError of bytes, a refused constant
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise JsonFormatError(f"{at}not valid JSON ({first})") from None
    if json_depth(obj) > max_depth:
        raise JsonFormatError(f"{at}JSON nested deeper than {max_depth} levels")
    return obj


def read_json(
    path: str | Path, max_bytes: int = SMALL_FILE_MAX_BYTES, max_depth: int = JSON_MAX_DEPTH, constants: bool = True
) -> Any:
    """A JSON file: a regular file under ``max_bytes``, UTF-8, parsed by :func:`parse_json`. Raises ``OSError``
    (missing, not a regular file, too large) or one-line :class:`JsonFormatError`."""
    try:
        text = read_text_capped(path, max_bytes)
    except UnicodeDecodeError as exc:
        raise JsonFormatError(f"{path}: not UTF-8 text ({exc.reason})") from None
    return parse_json(text, str(path), max_depth, constants)


def field(record: dict, key: str, types: type | tuple[type, ...], where: str, required: bool = True) -> Any:
    """``record[key]`` when it has one of ``types`` (a bool is not an int), else one :class:`JsonFormatError`
    line naming ``where`` and ``key``; None for an absent optional key."""
    if key not in record:
        if required:
            raise JsonFormatError(f"{where}: missing required key {key!r}")
        return None
    value = record[key]
    wanted = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
        names = " or ".join(t.__name__ for t in wanted)
        raise JsonFormatError(f"{where}: {key!r} must be {names}, got {type(value).__name__}")
    return value
