"""Named data shipped with the harness: class-name lists, prompt template sets, class groups, reference tables.

Each kind lives in ``resources/<kind>/<name>.json``; a task YAML refers to them by name, or gives a list, or a
path to a JSON list / a text file with one entry per line.
"""

from __future__ import annotations

import csv
import io
import json
from functools import cache
from importlib import resources as _res
from pathlib import Path
from typing import Any

from covar_harness.catalog.registry import UnknownNameError, UsageError
from covar_harness.common.safe_files import parse_json, read_text_capped

KINDS = ("classnames", "templates", "class_groups", "reference")


def _dir(kind: str):
    return _res.files("covar_harness") / "resources" / kind


def resource_text(kind: str, name: str) -> str:
    """A shipped text file (templates such as the leaderboard workflow), by folder and file name."""
    return (_dir(kind) / name).read_text(encoding="utf-8")


def available(kind: str) -> list[str]:
    """The shipped names of a kind (file stems), for "did you mean" messages."""
    d = _dir(kind)
    if not d.is_dir():
        return []
    return sorted(p.name.rsplit(".", 1)[0] for p in d.iterdir() if p.name.endswith((".json", ".csv")))


def resource_path(kind: str, filename: str):
    return _dir(kind) / filename


def read_csv(kind: str, filename: str) -> list[dict[str, str]]:
    """A shipped CSV table (``resources/<kind>/<filename>``), one dict per row keyed by the header row.

    The harness's one CSV reader (the paper's model and result tables, the CounterAnimals reference numbers):
    read as UTF-8 text through importlib.resources, so it works from a checkout, a wheel or a zip alike.
    """
    return parse_csv(resource_path(kind, filename).read_text(encoding="utf-8"))


def parse_csv(text: str) -> list[dict[str, str]]:
    """CSV text (header row first) -> one dict per row: the parser behind :func:`read_csv`, also for dataset
    files a format has already read safely (the Waterbirds release's ``metadata.csv``)."""
    return list(csv.DictReader(io.StringIO(text)))


@cache
def named(kind: str, name: str) -> Any:
    f = _dir(kind) / f"{name}.json"
    if not f.is_file():
        raise UnknownNameError(f"shipped {kind} list", name, available(kind))
    return json.loads(f.read_text(encoding="utf-8"))


def _from_file(path: Path) -> Any:
    try:  # regular files under a size cap only: a FIFO would hang, /dev/zero would never end
        text = read_text_capped(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc}") from None
    if path.suffix == ".json":
        try:
            return parse_json(text, "")
        except ValueError as exc:
            raise UsageError(f"{str(path)!r} is not valid JSON: {str(exc)[:200]}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_list(kind: str, value: Any, base: Path | None) -> Any:
    """A list given inline, by shipped name, or by file path (relative to ``base``, the YAML's folder)."""
    if value is None or isinstance(value, (list, dict)):
        return value
    candidate = Path(value).expanduser()
    if not candidate.is_absolute() and base is not None:
        candidate = base / candidate
    if candidate.suffix in (".json", ".txt") or candidate.is_file():
        if not candidate.is_file():
            raise UsageError(f"{kind} file {str(candidate)!r} does not exist")
        return _from_file(candidate)
    return named(kind, value)


def format_prompt(template: str, classname: str) -> str:
    return template.replace("{c}", classname).replace("{}", classname)
