"""The ``covar`` dataset format (docs/design.md section 5): ``classes.json`` + ``<subset>/metadata.jsonl`` + images.

COVAR itself is not released, so this format is the contract between any copy of it (or one made with
``covar-harness build-covar``) and the harness. Metadata is parsed as JSON data only and checked line by line,
so a broken line is reported with its file and line number instead of surfacing later as a bad sample.

Paths in metadata (``file_name``, ``mask``) are relative to the subset folder, so each subset folder is also a
Hugging Face ``imagefolder``. Builds made by ``build-covar`` before version 2 (and some copies) wrote paths
relative to the dataset root: without a ``build.json`` of version 2 or later, a path that already starts with
``<subset>/`` is taken as such. Either way the sample id is relative to the dataset root, which is the SampleSet
root, so ``SampleSet.open_mask`` works.
"""

from __future__ import annotations

import difflib
import io
from pathlib import Path, PurePosixPath
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import METADATA_MAX_BYTES, open_regular, read_json
from covar_harness.data.samples import DatasetNotFound, Sample, SampleSet, json_object
from covar_harness.data.subsets import ALL_SUBSETS

HOW_TO_GET = (
    "COVAR is not publicly released: place a copy in the documented layout (<root>/classes.json, "
    "<root>/<subset>/metadata.jsonl, images; docs/design.md section 5) or build one with "
    "`covar-harness build-covar --objects DIR --backgrounds DIR --out <root>`; point --data-dir (or the task's "
    "dataset.path) at it"
)


class CovarFormatError(UsageError):
    """A COVAR file that does not follow the layout; the message names the file (and line)."""


def read_classes(path: Path) -> list[str]:
    """``classes.json``: a JSON list of distinct, non-empty class names (label i = classes[i])."""
    try:
        classes = read_json(path)
    except (OSError, ValueError) as exc:
        raise CovarFormatError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise CovarFormatError(f"{path}: must be a non-empty JSON list of class-name strings")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise CovarFormatError(f"{path}: duplicate class names: {', '.join(dupes[:5])}")
    return classes


def _rel_path(value: Any, key: str, subset: str, where: str, legacy: bool = True) -> str:
    """A metadata path as a dataset-root-relative POSIX path; absolute paths and '..' are refused.

    ``legacy``: the file may predate subset-relative paths, so ``<subset>/...`` is read as root-relative.
    """
    if not isinstance(value, str) or not value.strip():
        raise CovarFormatError(f"{where}: {key!r} must be a non-empty string (a path relative to the subset folder)")
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise CovarFormatError(f"{where}: {key!r} must be a relative path inside the dataset, got {value!r}")
    return str(p) if legacy and p.parts[0] == subset else f"{subset}/{p}"


def build_info(root: Path) -> dict | None:
    """``build.json`` of a ``build-covar`` build, or None (no build, or not readable as a JSON object)."""
    try:
        info = read_json(root / "build.json")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def subset_relative(root: Path) -> bool:
    """True when ``build.json`` (or, for an unfinished build, the ``.covar-build`` marker) says the metadata paths
    are relative to the subset folder (build-covar version 2 on)."""
    info = build_info(root)
    if info is None:
        try:
            info = read_json(root / ".covar-build", 1 << 16)
        except (OSError, ValueError):
            return False
    version = info.get("build_version") if isinstance(info, dict) else None
    return isinstance(version, int) and not isinstance(version, bool) and version >= 2


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


def parse_record(
    line: str, subset: str, classes: list[str], lookup: dict[str, int], where: str, legacy: bool = True
) -> Sample:
    """One metadata line -> Sample; ``mask``, ``source_id`` and ``variation`` go to Sample.meta."""
    rec = json_object(line, where, ("file_name", "label"), CovarFormatError)
    meta: dict[str, Any] = {}
    if rec.get("mask") is not None:
        meta["mask"] = _rel_path(rec["mask"], "mask", subset, where, legacy)
    if rec.get("source_id") is not None:
        if not isinstance(rec["source_id"], (str, int)) or isinstance(rec["source_id"], bool):
            raise CovarFormatError(f"{where}: 'source_id' must be a string or an int")
        meta["source_id"] = str(rec["source_id"])
    if rec.get("variation") is not None:
        if not isinstance(rec["variation"], dict):
            raise CovarFormatError(f"{where}: 'variation' must be a JSON object of the transform's parameters")
        meta["variation"] = rec["variation"]
    return Sample(
        _rel_path(rec["file_name"], "file_name", subset, where, legacy),
        _label(rec["label"], classes, lookup, where),
        meta,
    )


def read_metadata(path: Path, subset: str, classes: list[str], legacy: bool = True) -> list[Sample]:
    """Every non-blank line of ``metadata.jsonl`` (a regular file under a size cap); a bad line raises with
    ``file:line``."""
    lookup = {c: i for i, c in enumerate(classes)}
    samples = []
    try:
        with open_regular(path, METADATA_MAX_BYTES) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    samples.append(parse_record(line, subset, classes, lookup, f"{path}:{number}", legacy))
    except UnicodeDecodeError as exc:
        raise CovarFormatError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise CovarFormatError(f"{path}: cannot read ({exc})") from exc
    return samples


def _check_masks(root: Path, samples: list[Sample], metadata: Path) -> None:
    """A mask named in metadata must be a regular file: diagnosis would otherwise fail far from the cause."""
    for s in samples:
        mask = s.meta.get("mask")
        if mask and not (root / mask).is_file():
            what = "is not a regular file" if (root / mask).exists() else "does not exist"
            raise CovarFormatError(f"{metadata}: sample {s.id!r} names mask {mask!r}, which {what} under {root}")


def load_covar(ds_cfg: dict, data_dir: Path) -> SampleSet:
    """Load one COVAR subset (``dataset.subset``) from ``dataset.path`` (already resolved by the harness)."""
    if not ds_cfg.get("path"):
        raise UsageError("covar format: dataset.path is required")
    subset = ds_cfg.get("subset")
    if not isinstance(subset, str) or not subset or "/" in subset:
        raise UsageError(f"covar format: dataset.subset must be a folder name such as {', '.join(ALL_SUBSETS)}")
    root = Path(ds_cfg["path"])
    classes_file = root / "classes.json"
    if not classes_file.exists():
        raise DatasetNotFound(f"COVAR dataset not found: no {classes_file}. {HOW_TO_GET}")
    metadata = root / subset / "metadata.jsonl"
    if not metadata.exists():
        present = sorted(p.name for p in root.iterdir() if (p / "metadata.jsonl").is_file())
        raise DatasetNotFound(
            f"COVAR subset {subset!r} not found: no {metadata} (subsets present: {', '.join(present) or 'none'}). "
            f"{HOW_TO_GET}"
        )
    classes = read_classes(classes_file)
    samples = read_metadata(metadata, subset, classes, legacy=not subset_relative(root))
    _check_masks(root, samples, metadata)
    return SampleSet(samples, classes, root, f"covar {root} [{subset}]")


def missing_subset_note(root: Path, subset: str) -> str | None:
    """Why a complete ``build-covar`` build lacks ``viewpoint`` (single-view objects), as a skip note; else None."""
    info = build_info(root)
    subsets = info.get("subsets") if info else None
    if subset != "viewpoint" or not isinstance(subsets, dict) or subset in subsets:
        return None
    return (
        f"skipped: the COVAR build at {root} has no viewpoint subset, because each of its objects has a single "
        "view (give several views per object in the objects' manifest.json to build one)"
    )


def preflight_covar(ds_cfg: dict, data_dir: Path) -> SampleSet | str:
    """The loader (cheap: metadata and mask stats, no image decoded), or a note for a single-view build."""
    try:
        return load_covar(ds_cfg, data_dir)
    except DatasetNotFound:
        note = missing_subset_note(Path(ds_cfg["path"]), str(ds_cfg.get("subset")))
        if note is None:
            raise
        return note
