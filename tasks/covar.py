"""The ``covar`` dataset format (DESIGN section 5): ``classes.json`` + ``<subset>/metadata.jsonl`` + images.

COVAR itself is not released, so this format is the contract between any copy of it (or one made with
``covar-harness build-covar``) and the harness. Metadata is parsed as JSON data only and checked line by line,
so a broken line is reported with its file and line number instead of surfacing later as a bad sample.

Paths in metadata (``file_name``, ``mask``) are relative to the subset folder; a path that already starts with
``<subset>/`` is taken as relative to the dataset root (that is what ``build-covar`` writes). Either way the
sample id is relative to the dataset root, which is the SampleSet root, so ``SampleSet.open_mask`` works.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from covar_harness.data import DatasetNotFound, Sample, SampleSet
from covar_harness.registry import UsageError

SUBSETS = ("original", "bg_varied", "hflip", "translate", "crop", "vflip", "rotation", "viewpoint", "scale")
HOW_TO_GET = (
    "COVAR is not publicly released: place a copy in the documented layout (<root>/classes.json, "
    "<root>/<subset>/metadata.jsonl, images; DESIGN section 5) or build one with "
    "`covar-harness build-covar --objects DIR --backgrounds DIR --out <root>`; point --data-dir (or the task's "
    "dataset.path) at it"
)


class CovarFormatError(UsageError):
    """A COVAR file that does not follow the layout; the message names the file (and line)."""


def read_classes(path: Path) -> list[str]:
    """``classes.json``: a JSON list of distinct, non-empty class names (label i = classes[i])."""
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CovarFormatError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise CovarFormatError(f"{path}: must be a non-empty JSON list of class-name strings")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise CovarFormatError(f"{path}: duplicate class names: {', '.join(dupes[:5])}")
    return classes


def _rel_path(value: Any, key: str, subset: str, where: str) -> str:
    """A metadata path as a dataset-root-relative POSIX path; absolute paths and '..' are refused."""
    if not isinstance(value, str) or not value.strip():
        raise CovarFormatError(f"{where}: {key!r} must be a non-empty string (a path relative to the subset folder)")
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise CovarFormatError(f"{where}: {key!r} must be a relative path inside the dataset, got {value!r}")
    return str(p) if p.parts[0] == subset else f"{subset}/{p}"


def _label(value: Any, classes: list[str], lookup: dict[str, int], where: str) -> int:
    """``label``: an index into classes.json or one of its names (exact)."""
    if isinstance(value, bool):
        raise CovarFormatError(f"{where}: 'label' must be an int or a class name, got {value!r}")
    if isinstance(value, int):
        if 0 <= value < len(classes):
            return value
        raise CovarFormatError(f"{where}: label {value} is outside classes.json (0..{len(classes) - 1})")
    if isinstance(value, str):
        if value in lookup:
            return lookup[value]
        close = difflib.get_close_matches(value, classes, n=3)
        hint = f" (close: {', '.join(map(repr, close))})" if close else ""
        raise CovarFormatError(f"{where}: label {value!r} is not a class in classes.json{hint}")
    raise CovarFormatError(f"{where}: 'label' must be an int or a class name, got {type(value).__name__}")


def parse_record(line: str, subset: str, classes: list[str], lookup: dict[str, int], where: str) -> Sample:
    """One metadata line -> Sample; ``mask``, ``source_id`` and ``variation`` go to Sample.meta."""
    try:
        rec = json.loads(line)
    except ValueError as exc:
        raise CovarFormatError(f"{where}: not valid JSON ({exc.args[0] if exc.args else exc})") from exc
    if not isinstance(rec, dict):
        raise CovarFormatError(f"{where}: each line must be a JSON object, got {type(rec).__name__}")
    for key in ("file_name", "label"):
        if key not in rec:
            raise CovarFormatError(f"{where}: missing required key {key!r}")
    meta: dict[str, Any] = {}
    if rec.get("mask") is not None:
        meta["mask"] = _rel_path(rec["mask"], "mask", subset, where)
    if rec.get("source_id") is not None:
        if not isinstance(rec["source_id"], (str, int)) or isinstance(rec["source_id"], bool):
            raise CovarFormatError(f"{where}: 'source_id' must be a string or an int")
        meta["source_id"] = str(rec["source_id"])
    if rec.get("variation") is not None:
        if not isinstance(rec["variation"], dict):
            raise CovarFormatError(f"{where}: 'variation' must be a JSON object of the transform's parameters")
        meta["variation"] = rec["variation"]
    return Sample(_rel_path(rec["file_name"], "file_name", subset, where),
                  _label(rec["label"], classes, lookup, where), meta)


def read_metadata(path: Path, subset: str, classes: list[str]) -> list[Sample]:
    """Every non-blank line of ``metadata.jsonl``; the first bad one raises with ``file:line``."""
    lookup = {c: i for i, c in enumerate(classes)}
    samples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                samples.append(parse_record(line, subset, classes, lookup, f"{path}:{number}"))
    return samples


def _check_masks(root: Path, samples: list[Sample], metadata: Path) -> None:
    """A mask named in metadata must exist: diagnosis would otherwise fail far from the cause."""
    for s in samples:
        mask = s.meta.get("mask")
        if mask and not (root / mask).is_file():
            raise CovarFormatError(f"{metadata}: sample {s.id!r} names mask {mask!r}, which does not exist under {root}")


def load_covar(ds_cfg: dict, data_dir: Path) -> SampleSet:
    """Load one COVAR subset (``dataset.subset``) from ``dataset.path`` (already resolved by the harness)."""
    if not ds_cfg.get("path"):
        raise UsageError("covar format: dataset.path is required")
    subset = ds_cfg.get("subset")
    if not isinstance(subset, str) or not subset or "/" in subset:
        raise UsageError(f"covar format: dataset.subset must be a folder name such as {', '.join(SUBSETS)}")
    root = Path(ds_cfg["path"])
    classes_file = root / "classes.json"
    if not classes_file.is_file():
        raise DatasetNotFound(f"COVAR dataset not found: no {classes_file}. {HOW_TO_GET}")
    metadata = root / subset / "metadata.jsonl"
    if not metadata.is_file():
        present = sorted(p.name for p in root.iterdir() if (p / "metadata.jsonl").is_file())
        raise DatasetNotFound(
            f"COVAR subset {subset!r} not found: no {metadata} (subsets present: {', '.join(present) or 'none'}). "
            f"{HOW_TO_GET}"
        )
    classes = read_classes(classes_file)
    samples = read_metadata(metadata, subset, classes)
    _check_masks(root, samples, metadata)
    return SampleSet(samples, classes, root, f"covar {root} [{subset}]")
