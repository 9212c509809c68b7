"""The ``retrieval`` dataset format: images with captions, for image-text retrieval tasks (recall@k).

Three layouts, chosen by ``dataset.layout`` (default: ``captions`` when ``<path>/captions.jsonl`` exists or no
``karpathy_json`` is named, else ``karpathy``):

- ``captions``: ``<path>/captions.jsonl`` (``captions_file``), one JSON object per image, ``{"file_name": ...,
  "captions": [...]}``, images beside it (paths relative to the file's folder; absolute paths and ``..`` refused).
- ``karpathy``: Karpathy's split file (``karpathy_json``, e.g. ``dataset_coco.json``) read directly: the images of
  ``split`` (default ``test``) at ``<path>/<images_dir>/<filepath>/<filename>``, captions from ``sentences[].raw``.
- ``hf``: a Hugging Face dataset (``path``: hub id or ``save_to_disk`` folder; ``split``, ``name``, ``revision``)
  with an image column (``image_key``, default ``image``) and a captions column (``captions_key``, default
  ``captions``; a list of strings or one string per row). Opened with the ``hf`` format's own code.

Files are parsed as JSON data only, read only when they are regular files under a size cap, and checked line by
line (or image by image): a bad one is one error naming the file and line. Unreadable images are the evaluator's
business (skipped and counted, docs/design.md section 5). The format registers ``task_kind="retrieval"``, which
routes its tasks to ``covar_harness.run.retrieval`` instead of the zero-shot classifier.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path, PurePosixPath
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import METADATA_MAX_BYTES, JsonFormatError, field, open_regular, read_json
from covar_harness.data.samples import (
    DatasetNotFound,
    HFSampleSet,
    Sample,
    SampleSet,
    hf_split,
    json_object,
    preflight_hf,
)

MAX_CAPTIONS = 1000  # per image: COCO has 5-7; more is a mistake
MAX_CAPTION_CHARS = 10_000  # tokenisers truncate at 64-77 tokens anyway
LAYOUTS = ("captions", "karpathy", "hf")
DEFAULT_HOW_TO_GET = (
    'place the images and a captions.jsonl (one {"file_name": ..., "captions": [...]} per line) there, '
    "or set dataset.karpathy_json to a Karpathy split file; point --data-dir (or the task's dataset.path) at it"
)


class RetrievalFormatError(UsageError):
    """A retrieval file that does not follow the layout; the message names the file (and line)."""


class CaptionedSampleSet(SampleSet):
    """Images with their captions (``Sample.meta["captions"]``); the fingerprint covers the captions too."""

    def captions(self, index: int) -> list[str]:
        return list(self.samples[index].meta["captions"])

    def fingerprint(self) -> str:
        h = hashlib.sha256(super().fingerprint().encode())
        for s in self.samples:
            h.update(json.dumps(s.meta.get("captions", []), ensure_ascii=False).encode() + b"\n")
        return "sha256:" + h.hexdigest()[:16]


class HFCaptionedSampleSet(CaptionedSampleSet, HFSampleSet):
    """Captioned samples held in a Hugging Face dataset (images decoded from its image column)."""


def _captions(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RetrievalFormatError(f"{where}: 'captions' must be a non-empty list of strings")
    if len(value) > MAX_CAPTIONS:
        raise RetrievalFormatError(f"{where}: {len(value)} captions, over the limit of {MAX_CAPTIONS} per image")
    for text in value:
        if not isinstance(text, str) or not text.strip():
            raise RetrievalFormatError(f"{where}: every caption must be a non-empty string, got {text!r:.60}")
        if len(text) > MAX_CAPTION_CHARS:
            raise RetrievalFormatError(f"{where}: a caption of {len(text)} characters (limit {MAX_CAPTION_CHARS})")
    return [text.strip() for text in value]


def _rel_path(value: Any, where: str, key: str = "file_name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise RetrievalFormatError(f"{where}: {key!r} must be a non-empty string (a path relative to the dataset)")
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise RetrievalFormatError(f"{where}: {key!r} must be a relative path inside the dataset, got {value!r}")
    return str(p)


def parse_line(line: str, where: str) -> Sample:
    """One captions.jsonl line -> Sample (id: the image path, ``meta["captions"]``)."""
    rec = json_object(line, where, ("file_name", "captions"), RetrievalFormatError)
    return Sample(_rel_path(rec["file_name"], where), 0, {"captions": _captions(rec["captions"], where)})


def read_captions(path: Path) -> list[Sample]:
    """Every non-blank line of a captions.jsonl (a regular file under a size cap); a bad line raises with
    ``file:line``, and so does an image listed twice (its captions would split into two gallery entries)."""
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    try:
        with open_regular(path, METADATA_MAX_BYTES) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    sample = parse_line(line, f"{path}:{number}")
                    if sample.id in seen:
                        raise RetrievalFormatError(
                            f"{path}:{number}: {sample.id!r} is listed again (first on line {seen[sample.id]}); "
                            "put all its captions on one line"
                        )
                    seen[sample.id] = number
                    samples.append(sample)
    except UnicodeDecodeError as exc:
        raise RetrievalFormatError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise RetrievalFormatError(f"{path}: cannot read ({exc})") from exc
    return samples


def read_karpathy(path: Path, split: str, images_dir: str) -> list[Sample]:
    """The images of one split of a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``)."""
    try:
        data = read_json(path, METADATA_MAX_BYTES)
    except (OSError, ValueError) as exc:
        raise RetrievalFormatError(f"{path}: not readable JSON ({str(exc).splitlines()[0]})") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise RetrievalFormatError(f"{path}: expected a JSON object with an 'images' list (a Karpathy split file)")
    samples = []
    for number, item in enumerate(images):
        where = f"{path}: images[{number}]"
        if not isinstance(item, dict):
            raise RetrievalFormatError(f"{where}: must be a JSON object")
        if item.get("split") != split:
            continue
        sentences = item.get("sentences")
        if not isinstance(sentences, list) or not all(isinstance(s, dict) for s in sentences):
            raise RetrievalFormatError(f"{where}: 'sentences' must be a list of objects with 'raw'")
        try:
            folder = field(item, "filepath", str, where, required=False) or ""
        except JsonFormatError as exc:
            raise RetrievalFormatError(str(exc)) from None
        parts = [images_dir, folder, _rel_path(item.get("filename"), where, "filename")]
        rel = _rel_path("/".join(p for p in parts if p), where, "filepath")
        samples.append(Sample(rel, 0, {"captions": _captions([s.get("raw") for s in sentences], where)}))
    if not samples:
        raise RetrievalFormatError(f"{path}: no image has split {split!r}")
    return samples


def _layout(ds: dict, root: Path) -> str:
    layout = ds.get("layout")
    if layout is None:
        named = ds.get("karpathy_json")
        return "karpathy" if named and not (root / ds.get("captions_file", "captions.jsonl")).exists() else "captions"
    if layout not in LAYOUTS:
        raise UsageError(f"retrieval format: dataset.layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return str(layout)


def _missing(ds: dict, what: Path) -> DatasetNotFound:
    return DatasetNotFound(f"retrieval dataset not found: no {what}. {ds.get('how_to_get') or DEFAULT_HOW_TO_GET}")


def _read_local(ds: dict, root: Path, layout: str) -> tuple[list[Sample], str]:
    if layout == "karpathy":
        if not ds.get("karpathy_json"):
            raise UsageError("retrieval format: layout karpathy needs dataset.karpathy_json (e.g. dataset_coco.json)")
        file = root / str(ds["karpathy_json"])
        if not file.exists():
            raise _missing(ds, file)
        split = str(ds.get("split", "test"))
        images_dir = _rel_path(ds["images_dir"], str(file), "images_dir") if ds.get("images_dir") else ""
        return read_karpathy(file, split, images_dir), f"karpathy {file} [{split}]"
    rel = _rel_path(ds.get("captions_file", "captions.jsonl"), "retrieval format: dataset", "captions_file")
    file = root / rel
    if not file.exists():
        raise _missing(ds, file)
    folder = PurePosixPath(rel).parent
    samples = read_captions(file)
    if str(folder) != ".":  # ids relative to the root, images beside the captions file
        samples = [Sample(f"{folder}/{s.id}", s.label, s.meta) for s in samples]
    return samples, f"captions {file}"


def _load_hf(ds: dict) -> SampleSet:
    """A Hugging Face dataset with an image and a captions column, opened as the ``hf`` format opens it."""
    raw, split = ds.get("raw_path", ds.get("path")), ds.get("split", "test")
    image_key, captions_key = ds.get("image_key", "image"), ds.get("captions_key", "captions")
    data = hf_split(ds, (image_key, captions_key))
    column = data[captions_key]
    samples = [Sample(str(i), 0, {"captions": _captions(c, f"{raw} row {i}")}) for i, c in enumerate(column)]
    return HFCaptionedSampleSet(data, image_key, samples, None, f"hf {raw} [{split}]")


def load_retrieval(ds: dict, data_dir: Path) -> SampleSet:
    """Load a retrieval dataset (``dataset.path`` already resolved by the harness) as a CaptionedSampleSet."""
    if not ds.get("path"):
        raise UsageError("retrieval format: dataset.path is required")
    root = Path(ds["path"])
    layout = _layout(ds, root)
    if layout == "hf":
        return _load_hf(ds)
    if not root.is_dir():
        raise _missing(ds, root)
    samples, description = _read_local(ds, root, layout)
    return CaptionedSampleSet(samples, None, root, description)


def preflight_retrieval(ds: dict, data_dir: Path) -> SampleSet | None:
    """Local layouts: the loader (cheap: captions read, no image decoded); hub datasets are not contacted."""
    if _layout(ds, Path(ds.get("path") or ".")) == "hf":
        preflight_hf(ds, data_dir)  # checks the columns' names; a hub dataset's rows are not read here
        return None
    return load_retrieval(ds, data_dir)
