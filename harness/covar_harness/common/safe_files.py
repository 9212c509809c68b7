"""Safe files: bounded reads, atomic writes and file names safe on every OS, for every stage.

Reading opens a file only when it is a regular file under a size cap for its kind: a FIFO, device, socket or
folder where a file was expected fails with :class:`NotRegularFile` instead of hanging the run; a file over its
cap fails with :class:`FileTooLarge` instead of exhausting memory. Writing goes through :func:`atomic_write`
(temp file beside the target, then rename), so a reader never sees half a file. :func:`slug` names the files of
results, caches, masks and overlays.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

import orjson

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
    if _openings(text) > max_depth and json_depth(obj) > max_depth:  # d levels need d opening brackets
        raise JsonFormatError(f"{at}JSON nested deeper than {max_depth} levels")
    return obj


def parse_json_record(text: str | bytes, where: str, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """:func:`parse_json` with ``constants=False``, parsed by orjson: a line of a large log (a sample log's
    50,000 lines of floats parse 2.8x faster than with ``json``, to the same values bit for bit: both round
    correctly). Integers beyond 64 bits read as floats (no log holds one); errors are the same one line."""
    at = f"{where}: " if where else ""
    try:
        obj = orjson.loads(text)  # refuses NaN / Infinity, as constants=False does
    except ValueError as exc:  # orjson.JSONDecodeError, a recursion limit included
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise JsonFormatError(f"{at}not valid JSON ({first})") from None
    if _openings(text) > max_depth and json_depth(obj) > max_depth:
        raise JsonFormatError(f"{at}JSON nested deeper than {max_depth} levels")
    return obj


def _openings(text: str | bytes) -> int:
    """How many ``[`` and ``{`` the text holds (in strings too): a bound on its nesting that costs no walk, so a
    sample log's lines (a dozen containers each) are not walked value by value."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")


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


SLUG_HASH = 16  # hex digits of SHA-256 in a hashed slug: 64 bits, no collision found by a birthday search
LEGACY_SLUG_HASH = 8  # what harnesses before 0.2 wrote (32 bits: a collision takes 2 s to find)
SLUG_MAX = 200  # bytes (slugs are ASCII); leaves room for ".samples.jsonl" and the temp-file affixes under 255
_SAFE_PART = re.compile(r"[A-Za-z0-9.=-](?:[A-Za-z0-9._=-]*[A-Za-z0-9=-])?")  # one "/"-separated part kept as is
_HASHED_TAIL = re.compile(r"-(?:[0-9a-f]{8}|[0-9a-f]{16})$")  # a hashed slug, in the form written now or earlier
_RESERVED = re.compile(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?")  # Windows device names, any extension


def _kept_as_is(text: str) -> bool:
    """True when ``/`` -> ``__`` is the only change and can be undone: every part is safe, has no ``__``, does
    not start or end with ``_`` or start with ``.``, and the result could not be mistaken for a hashed slug."""
    parts = text.split("/")
    readable = "__".join(parts)
    return (
        all(_SAFE_PART.fullmatch(p) and "__" not in p and not p.startswith(".") for p in parts)
        and len(readable) <= SLUG_MAX
        and not _HASHED_TAIL.search(readable)
        and not _RESERVED.fullmatch(readable)
    )


def slug(text: str, *, hashed: bool = True, digits: int = SLUG_HASH) -> str:
    """Filesystem-safe, readable, stable and injective: distinct names never share a result file.

    Safe names keep today's form (``demo/shapes-clean`` -> ``demo__shapes-clean``); anything else (``:``, spaces,
    non-ASCII, a leading dot, a reserved device name, over ``SLUG_MAX`` bytes) becomes its readable ASCII part
    plus ``-`` and 16 hex digits (64 bits) of the SHA-256 of the original text: ``openclip:ViT-B-32/openai`` ->
    ``openclip_ViT-B-32__openai-<hash>``. A slug is never empty, ``.``, ``..``, hidden, or a path. ``digits=8``
    gives the shorter form earlier harnesses wrote (``legacy_result_path``).

    ``hashed=False`` is the short form ``build-covar`` names objects, backgrounds and class folders with: each run
    of characters outside ``[A-Za-z0-9_.-]`` becomes ``-`` (``ice bear`` -> ``ice-bear``), no hash. It is not
    injective (build-covar refuses duplicate object ids instead), and it must not change: an object's id seeds
    its random draws, so another form would change every image of a rebuilt COVAR copy. Safe names, such as
    COVAR-Shapes' ``circle-0``, come out the same in both forms.
    """
    text = str(text)
    if not hashed:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"
    if _kept_as_is(text):
        return text.replace("/", "__")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:digits]
    readable = re.sub(r"[^A-Za-z0-9._=-]+", "_", text.replace("/", "__")).strip("_.")
    readable = readable[: SLUG_MAX - digits - 2].rstrip("_.") or "unnamed"
    out = f"{readable}-{digest}"
    return "_" + out if _RESERVED.fullmatch(out) else out  # "nul.txt-1a2b3c4d" is still the device NUL on Windows


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` as ``open()`` / ``mkdir`` would create it under this process's umask. Why: ``mkstemp`` and
    ``mkdtemp`` make 0600 / 0700 whatever the umask, so files renamed into place would be private to the user
    even where the umask shares them (a group's results folder, a web server serving the report)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mode & ~mask


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """``write(file)`` into a temp file beside ``path``, then rename: readers see the old file or the new one
    (with the mode the umask gives new files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode(0o666))
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
