"""Result files (DESIGN section 6): one JSON per model x task, written atomically, validated on read.

The file is the unit of resume (an existing file means the pair is done) and of leaderboard submission.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
FRACTION_METRICS = ("acc1", "acc5", "mean_per_class_recall", "fg_driven_rate", "bg_er", "fine_er")


def slug(text: str) -> str:
    """Filesystem-safe, readable and stable: ``openclip:ViT-B-32/openai`` -> ``openclip_ViT-B-32__openai``."""
    text = text.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_.") or "unnamed"


def result_path(output_dir: Path, model_spec: str, task_name: str) -> Path:
    return Path(output_dir) / slug(model_spec) / f"{slug(task_name)}.json"


def samples_path(result_file: Path) -> Path:
    return result_file.with_name(result_file.name[: -len(".json")] + ".samples.jsonl")


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """``write(file)`` into a temp file beside ``path``, then rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=2, allow_nan=False))


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    def write(fh):
        for row in rows:
            fh.write(json.dumps(row, allow_nan=False, separators=(",", ":")) + "\n")

    atomic_write(path, write)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(device: str, started_at: str) -> dict[str, Any]:
    from covar_harness import __version__

    return {
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


def load(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# ---- validation (leaderboard CI) -------------------------------------------------------------------------
_SPEC: dict[str, dict[str, type | tuple]] = {
    "model": {"spec": str, "name": str, "family": str},
    "task": {"name": str, "version": (int, str), "n_samples": int, "n_failed": int, "n_classes": int,
             "data_fingerprint": str},
    "metrics": {"acc1": (float, int), "acc5": (float, int, type(None)), "mean_per_class_recall": (float, int)},
    "config": {"batch_size": int, "precision": str, "seed": int, "templates": list},
    "provenance": {"harness_version": str, "python": str, "torch": (str, type(None)), "device": str,
                   "started_at": str, "finished_at": str},
}


def _tname(t) -> str:
    return " or ".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,))).replace("NoneType", "null")


def validate(obj: Any) -> list[str]:
    """Every problem with a result object, each as ``key.path: message``; empty when valid."""
    if not isinstance(obj, dict):
        return ["top level: must be a JSON object"]
    errors = []
    if obj.get("schema_version") != SCHEMA_VERSION:
        errors.append(f"schema_version: expected {SCHEMA_VERSION}, got {obj.get('schema_version')!r}")
    for section, fields in _SPEC.items():
        block = obj.get(section)
        if not isinstance(block, dict):
            errors.append(f"{section}: missing or not an object")
            continue
        for key, typ in fields.items():
            if key not in block:
                errors.append(f"{section}.{key}: missing")
            elif isinstance(block[key], bool) or not isinstance(block[key], typ):
                errors.append(f"{section}.{key}: expected {_tname(typ)}, got {type(block[key]).__name__}")
    metrics = obj.get("metrics") if isinstance(obj.get("metrics"), dict) else {}
    for key, value in metrics.items():
        if key in FRACTION_METRICS and value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                errors.append(f"metrics.{key}: must be a fraction in [0, 1], got {value!r}")
    task = obj.get("task") if isinstance(obj.get("task"), dict) else {}
    for key in ("n_samples", "n_failed", "n_classes"):
        if isinstance(task.get(key), int) and task[key] < 0:
            errors.append(f"task.{key}: must be >= 0")
    if isinstance(task.get("n_samples"), int) and task.get("n_samples") == 0 and metrics.get("acc1") is not None:
        errors.append("task.n_samples: 0 samples cannot have an accuracy")
    for key, interval in (obj.get("intervals") or {}).items():
        if not (isinstance(interval, list) and len(interval) == 2 and all(isinstance(v, (int, float)) for v in interval)):
            errors.append(f"intervals.{key}: must be [low, high]")
        elif not 0 <= interval[0] <= interval[1] <= 1:
            errors.append(f"intervals.{key}: must satisfy 0 <= low <= high <= 1, got {interval}")
    return errors
