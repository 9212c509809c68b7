"""Result files (docs/design.md section 6): one JSON per model x task, written atomically, validated on read.

The file is the unit of resume (an existing file means the pair is done) and of leaderboard submission.
"""

from __future__ import annotations

import json
import math
import operator
import os
import platform
import re
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from covar_harness import __version__
from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import unsafe_name, unsafe_text
from covar_harness.common.safe_files import LEGACY_SLUG_HASH, atomic_write, parse_json, read_text_capped, slug

SCHEMA_VERSION = 1
# The version of the per-sample log ``--log-samples`` writes, recorded as ``config.sample_log_version``. 2 (issue 26):
# the diagnosis fields also hold what ``rescore`` needs (``fg``, ``null_fg`` / ``nulls``, ``fine_by_rule``) and the
# attribution records the other target's Shapley values and region similarities. A log without the key is 1.
# 3 (issue 26): no ``fine_by_rule`` on the errors' lines; the result holds each fine rule's fine (label, pred)
# pairs instead (``config.diagnosis.fine_rules[rule].fine_pairs``). ``rescore`` reads 2 and 3 and writes 3.
SAMPLE_LOG_VERSION = 3


def result_path(output_dir: Path, model_spec: str, task_name: str) -> Path:
    """``<output_dir>/<slug(model)>/<slug(task)>.json``: always a file two levels inside ``output_dir``."""
    folder, name = slug(model_spec), slug(task_name)
    if any(sep in folder + name for sep in ("/", "\\", "\0")) or {folder, name} & {"", ".", ".."}:
        raise ValueError(f"unsafe result path for {model_spec!r} x {task_name!r}")  # slug guarantees it; belt, braces
    return Path(output_dir) / folder / f"{name}.json"


def legacy_result_path(output_dir: Path, model_spec: str, task_name: str) -> Path | None:
    """Where a harness before 0.2 put the pair's result (8-hex-digit slugs), or None when that is the same path:
    the run plan still finds such a file (and compares its model and task names before reusing it)."""
    folder, name = slug(model_spec, digits=LEGACY_SLUG_HASH), slug(task_name, digits=LEGACY_SLUG_HASH)
    path = Path(output_dir) / folder / f"{name}.json"
    return None if path == result_path(output_dir, model_spec, task_name) else path


def samples_path(result_file: Path) -> Path:
    return result_file.with_name(result_file.name[: -len(".json")] + ".samples.jsonl")


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON data: NaN and infinities become ``None`` (JSON has no such numbers, and a model or a
    metadata file can produce them), numpy scalars and arrays become Python numbers and lists, tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {_key(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    np = sys.modules.get("numpy")  # only ever numpy objects if numpy is loaded; never import it here
    if np is not None and isinstance(obj, (np.ndarray, np.generic)):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj  # anything else: json raises TypeError naming it


def _key(key: Any) -> Any:
    np = sys.modules.get("numpy")
    key = key.item() if np is not None and isinstance(key, np.generic) else key
    return str(key) if isinstance(key, float) and not math.isfinite(key) else key


def write_json(path: Path, obj: Any) -> None:
    """Atomic, and never a ValueError for a NaN: non-finite numbers are written as ``null``."""
    data = jsonable(obj)
    atomic_write(path, lambda fh: json.dump(data, fh, indent=2, allow_nan=False))


def write_jsonl(path: Path, rows: Iterable[dict], logged: Sequence[tuple[dict, str]] | None = None) -> None:
    """One JSON object a line (the per-sample log); non-finite numbers are written as ``null``. ``logged``: the
    (row, line) pairs of the log these rows were read from, in their order (``rescore``): what a row keeps of
    its logged row is copied from that line, not serialized again (:func:`rewritten_line`; most of a
    50,000-line rewrite's time is spent writing floats back as decimals)."""

    def write(fh):
        for i, row in enumerate(rows):
            line = rewritten_line(row, *logged[i]) if logged is not None and i < len(logged) else None
            fh.write((_jsonl_line(row) if line is None else line) + "\n")

    atomic_write(path, write)


def rewritten_line(row: dict, old: dict, line: str) -> str | None:
    """``row`` as a log line that reuses ``line`` (the compact JSON of ``old``): ``line`` itself when the rows are
    the same JSON (:func:`same_json`: key order and number types too, so the bytes are those a serialization of
    ``row`` gives); when ``row`` keeps ``old``'s first fields (and maybe its last ones) and changes those between,
    the kept parts of ``line`` around the changed fields, serialized. None when nothing at the start is kept or
    ``line`` cannot be cut safely: a cut is at the one ``,"key":`` of a field (a ``,"`` cannot occur inside a JSON
    string, where every quote is escaped; a second match, say in a nested object, and the row is serialized
    whole)."""
    new_keys, old_keys = list(row), list(old)
    common = min(len(new_keys), len(old_keys))
    n = _kept_run(new_keys, old_keys, list(row.values()), list(old.values()))  # the very objects read: no walk
    while n < common and new_keys[n] == old_keys[n] and _same_field(row, old, new_keys[n]):
        n += 1
    if n == len(new_keys) == len(old_keys):
        return line
    m = 0  # fields kept at the end, after the changed ones
    while m < common - n and new_keys[-1 - m] == old_keys[-1 - m] and _same_field(row, old, new_keys[-1 - m]):
        m += 1
    if n == 0 or not line.startswith(f'{{"{old_keys[0]}":'):
        return None  # nothing kept, or not written compact (the cuts look for compact keys)
    end = len(line.rstrip()) - 1  # the closing brace
    head = _cut(line, old_keys[n]) if n < len(old_keys) else end
    tail = _cut(line, old_keys[-m]) if m else end
    if head is None or tail is None or head > tail or line[end] != "}":
        return None
    middle = {k: row[k] for k in new_keys[n : len(new_keys) - m]}
    text = line[:head] + ("," + _jsonl_line(middle)[1:-1] if middle else "")
    return text + line[tail : end + 1]


def _kept_run(new_keys: list, old_keys: list, new_values: list, old_values: list) -> int:
    """How many leading fields have the same key and the very same value object (compared in C)."""
    same = list(map(operator.and_, map(operator.eq, new_keys, old_keys), map(operator.is_, new_values, old_values)))
    return same.index(False) if False in same else len(same)


def _same_field(row: dict, old: dict, key: str) -> bool:
    value, was = row[key], old[key]
    if value is was:  # a kept field is the very object read: no walk
        return True
    kind = type(value)
    if kind is type(was) and (kind is float or kind is str or kind is int):  # same_json's answer, without a call
        return bool(value == was)
    return same_json(value, was)


def _cut(line: str, key: str) -> int | None:
    """Where the top-level field ``key`` starts in the compact line (at its comma); None unless that is sure."""
    marker = f',"{key}":'
    at = -1 if '"' in key or "\\" in key else line.find(marker)
    return None if at < 0 or line.find(marker, at + 1) >= 0 else at


def same_json(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` serialize to the same JSON text: equal, with the same types (1, 1.0 and True
    are equal in Python, not in JSON) and dict keys in the same order. A flat list or dict compares in C."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        if list(a) != list(b):
            return False
        a, b = list(a.values()), list(b.values())
    elif type(a) is not list:
        return bool(a == b)
    types = list(map(type, a))
    if types != list(map(type, b)):
        return False
    if dict in types or list in types:
        return all(same_json(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _jsonl_line(row: dict) -> str:
    """One log line. Most rows are plain JSON data already, which ``json.dumps`` writes as :func:`jsonable`'s copy
    would be written; only a row it refuses (a NaN, a numpy number) is made plain first: a 50,000-sample log
    is written without walking every value in Python."""
    try:
        return json.dumps(row, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return json.dumps(jsonable(row), allow_nan=False, separators=(",", ":"))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the covar_harness package: harness/covar_harness in a checkout
DISTRIBUTION = "covar-harness"


def run_git(folder: Path, *args: str) -> str | None:
    """``git -C folder ARGS`` stdout, stripped; None when git is missing, fails or prints nothing."""
    try:
        out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _is_harness_checkout(root: Path) -> bool:
    """Whether ``root`` is the top of a covar-harness source tree: its pyproject.toml names this distribution."""

    try:
        text = read_text_capped(root / "pyproject.toml", 1 << 20)
    except (OSError, UnicodeDecodeError):
        return False
    project = re.search(r"(?ms)^\[project\]\s*$(.*?)(?=^\[)", text + "\n[")  # the [project] table's body
    name = rf'(?m)^name\s*=\s*["\']{re.escape(DISTRIBUTION)}["\']\s*(#.*)?$'
    return bool(project and re.search(name, project.group(1)))


def _git_commit(package_dir: Path | None = None) -> str | None:
    """The commit of the harness's own checkout, or None.

    Only when the package folder sits at the top of a git work tree whose root is a covar-harness source tree
    (``<root>/pyproject.toml`` names ``covar-harness`` and the package is ``<root>/harness/covar_harness``).
    Why: a harness installed inside someone else's repository (a virtualenv in their project, a vendored copy) would
    otherwise record *their* HEAD as the harness commit, which is worse than recording nothing.
    """
    here = (package_dir or PACKAGE_DIR).resolve()
    top = run_git(here, "rev-parse", "--show-toplevel")
    root = here.parents[1]
    if top is None or Path(top).resolve() != root or not _is_harness_checkout(root):
        return None
    return run_git(root, "rev-parse", "HEAD")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(device: str, started_at: str, distributed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and when a result was made; ``distributed``: the ranks of a torchrun job (``distributed.py``)."""

    out = {
        "harness_version": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "open_clip": _version("open_clip_torch"),
        "transformers": _version("transformers"),
        "device": device,
        "started_at": started_at,
        "finished_at": now(),
    }
    return out if distributed is None else {**out, "distributed": distributed}


MAX_NAME = 1000  # characters in a name (a model spec may be a long local path)
MAX_RESULT_BYTES = 64 * 2**20  # a result file is a few KiB; anything near this is not one
MAX_DEPTH = 64  # result files nest 4 levels deep


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; ``ValueError`` for anything else.

    FIFOs, devices (a ``*.json`` symlink to ``/dev/zero``), sockets and folders are refused before they are
    opened, and again on the open descriptor (opened non-blocking, so a FIFO swapped in meanwhile cannot hang).
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError("not a regular file")
    fd = os.open(
        path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    )
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"larger than {max_bytes} bytes ({info.st_size})")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return b"".join(chunks)


def result_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every ``*.json`` under ``folder`` (recursively, sorted; symlinked folders are not followed, so no loops),
    and the sub-folders that could not be listed, each with a one-line reason."""
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []

    def unreadable(exc: OSError) -> None:
        problems.append((Path(exc.filename or folder), f"cannot list: {exc.strerror or exc}"))

    for root, _dirs, files in os.walk(folder, onerror=unreadable, followlinks=False):
        found += [Path(root) / name for name in files if name.endswith(".json")]
    return sorted(found), problems


def expand_paths(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given and folders as every ``*.json`` under them, plus (path, reason) for folders that could
    not be listed. A path that does not exist, or a folder without result files, is a ``UsageError``."""

    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for path in map(Path, paths):
        try:
            is_dir, exists = path.is_dir(), os.path.lexists(path)
        except (OSError, ValueError) as exc:
            problems.append((path, f"cannot read: {exc}"))
            continue
        if not exists:
            raise UsageError(f"no such file or folder: {short_value(str(path))}")
        if not is_dir:
            files.append(path)
            continue
        found, unlisted = result_files(path)
        if not found and not unlisted:
            raise UsageError(f"no *.json result files under {short_value(str(path))}")
        files += found
        problems += unlisted
    return files, problems


def load(path: Path, max_bytes: int | None = None, max_depth: int | None = None) -> Any:
    """A result file's JSON, read safely: regular files only, at most ``max_bytes`` (default
    ``MAX_RESULT_BYTES``), nested at most ``max_depth`` levels (default ``MAX_DEPTH``), no NaN / Infinity
    literals. Any problem is an ``OSError`` or a one-line ``ValueError``; nothing can hang or exhaust memory."""
    max_bytes = MAX_RESULT_BYTES if max_bytes is None else max_bytes
    max_depth = MAX_DEPTH if max_depth is None else max_depth
    text = read_regular(Path(path), max_bytes).decode("utf-8")
    return parse_json(text, "", max_depth, constants=False)  # the one bounded JSON reader (common.safe_files)


# ---- values ----------------------------------------------------------------------------------------------
def is_number(value: Any) -> bool:
    """A finite JSON number (not a bool, not NaN or an infinity, not an int too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def text_problem(value: str, *, name: bool) -> str | None:
    """Why ``value`` may not be stored as a name (``name``) or a free-text line; None when it may."""
    if name and not value.strip():
        return "must not be empty"
    if name and len(value) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters, has {len(value)}"
    if (unsafe_name if name else unsafe_text)(value):
        if name:
            return "must not contain control, bidi, invisible or surrogate characters, line breaks or end spaces"
        return "must not contain control, bidi or surrogate characters"
    return None


def short_value(value: Any) -> str:
    """A value for an error message: repr of a scalar, cut to 60 characters; the type name of anything else."""
    try:
        text = repr(value) if isinstance(value, (str, int, float)) or value is None else type(value).__name__
    except ValueError:  # an int with more digits than Python will print
        text = "a very large int"
    return text if len(text) <= 60 else text[:57] + "..."
