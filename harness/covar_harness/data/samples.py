"""Task data: the samples of a task, however they are stored, behind one small class.

A dataset format (``dataset.format`` in task YAML) is a loader registered through ``register_dataset_formats``
that returns a :class:`SampleSet`. Images are opened lazily, in DataLoader workers; an unreadable image is
the evaluator's business (skipped and counted), not the format's.

A format may also register ``preflight=fn``: ``fn(dataset_cfg, data_dir)`` checks cheaply (no image decoded, no
network) that the data is there. It returns a note (the task is skipped with it), a SampleSet it could open
cheaply (checked further against the task), or None; missing data raises :class:`DatasetNotFound`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import JsonFormatError, parse_json
from covar_harness.data.pixels import as_mask, as_rgb, open_image_file
from covar_harness.data.resources import load_list

if TYPE_CHECKING:
    from PIL import Image

    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.catalog.taskconfig import TaskConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATA_ENV = "COVAR_HARNESS_DATA"
LABEL_MAPPINGS = ("by_name", "positional")


class DatasetNotFound(UsageError):
    """The data a task needs is not where it should be; the message says where we looked and how to get it."""


@dataclass
class Sample:
    id: str  # path relative to the dataset root, or an id
    label: int
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. mask (relative path), source_id, variation


@dataclass(frozen=True)
class ClassMap:
    """Predictions made over another class list and mapped onto the task's labels.

    The Backgrounds Challenge scores ImageNet-9 with a 1000-way ImageNet classifier whose top-1 goes through
    ``in_to_in9.json``: an ImageNet class that belongs to no IN-9 class (-1) is always wrong. A SampleSet with a
    ``class_map`` is scored that way: the classifier is built over ``classnames`` (so it is the same classifier,
    and the same cached text embeddings, as any task over those names), ``to_label[i]`` is the task label of
    classifier class i or -1. A label's score is the largest logit among its classifier classes, and the classes
    no label claims form one more bucket, ``other_name``, that is never a label: the argmax over these buckets is
    the mapped 1000-way top-1.
    """

    classnames: tuple[str, ...]
    to_label: tuple[int, ...]
    source: str
    other_name: str = "none of these classes"

    def __post_init__(self) -> None:
        if len(self.classnames) != len(self.to_label):
            raise ValueError(f"class map: {len(self.to_label)} labels for {len(self.classnames)} classifier classes")
        if any(label < -1 for label in self.to_label):
            raise ValueError("class map: a classifier class maps to a label below -1")

    @property
    def has_other(self) -> bool:
        return any(label == -1 for label in self.to_label)

    def label_names(self, names: Sequence[str]) -> list[str]:
        """The task's class names, then the unclaimed classes' bucket when there is one (its index: len(names))."""
        top = max(self.to_label, default=-1)
        if top >= len(names):
            raise ValueError(f"class map {self.source}: label {top} outside the task's {len(names)} class names")
        return [*names, self.other_name] if self.has_other else list(names)

    def members(self, n_labels: int) -> list[list[bool]]:
        """Per bucket (each label, then the unclaimed classes when there are any): which classifier classes it takes."""
        buckets = [*range(n_labels), -1] if self.has_other else list(range(n_labels))
        return [[label == b for label in self.to_label] for b in buckets]

    def record(self, n_labels: int) -> dict[str, Any]:
        """What the result says about the mapping: source, sizes, and the index of the unclaimed bucket."""
        return {
            "source": self.source,
            "classifier_classes": len(self.classnames),
            "unmapped_classes": sum(label == -1 for label in self.to_label),
            "other_index": n_labels if self.has_other else None,
            "other_name": self.other_name if self.has_other else None,
        }


class SampleSet:
    """The samples of one task plus how to open them. Picklable, so DataLoader workers can use it.

    ``label_mapping`` says how labels were tied to a task's explicit ``classnames``: "by_name" (the dataset's
    class names matched them as a set, labels reordered to follow the list), "positional" (label i is the
    list's i-th name), or None (the class names come from the dataset itself). ``notes``: what the loader wants
    the result to say about the data (e.g. that a variation asked for masks got none); the evaluator copies them
    into the result's ``notes``.
    """

    label_mapping: str | None = None
    class_map: ClassMap | None = None  # predictions over other classes, mapped onto the labels (ClassMap)
    # group -> weight of the ``group`` metas in the average the group gap starts from (run.group_metrics):
    # Waterbirds' training group sizes, as WILDS's adj_acc_avg weights them; None: every sample counts once
    group_weights: dict[str, float] | None = None

    def __init__(self, samples: list[Sample], classnames: list[str] | None, root: Path | None, description: str = ""):
        self.samples = samples
        self.classnames = classnames
        self.root = root
        self.description = description
        self.label_mapping = None
        self.notes: list[str] = []

    def __len__(self) -> int:
        return len(self.samples)

    def open_image(self, index: int) -> Image.Image:
        return open_image_file(self._path(self.samples[index].id), as_rgb)

    def open_mask(self, index: int) -> Image.Image | None:
        """The foreground mask (mode L, white = object) when the dataset ships one."""
        rel = self.samples[index].meta.get("mask")
        if not rel:
            return None
        return open_image_file(self._path(rel), as_mask)

    @property
    def has_masks(self) -> bool:
        return any(s.meta.get("mask") for s in self.samples)

    def _path(self, rel: str) -> Path:
        if self.root is None:
            raise ValueError("this sample set has no root folder")
        return self.root / rel

    def subset(self, indices: list[int]) -> SampleSet:
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.samples = [self.samples[i] for i in indices]
        return out

    def fingerprint(self) -> str:
        """sha256 over ids, labels and file sizes: changes when the data does, not when it is copied."""
        h = hashlib.sha256()
        for s in self.samples:
            size = ""
            if self.root is not None:
                try:
                    size = str(os.stat(self.root / s.id).st_size)
                except OSError:
                    size = "missing"
            h.update(f"{s.id}\t{s.label}\t{size}\n".encode())
        return "sha256:" + h.hexdigest()[:16]


def default_data_dir(data_dir: str | Path | None = None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path("~/.cache/covar-harness/data").expanduser()


# ---- a task's data -------------------------------------------------------------------------------------
def resolve_dataset(cfg: TaskConfig, data_dir: str | Path | None = None) -> tuple[dict, Path]:
    """The task's ``dataset`` mapping with ``path`` resolved (original kept as ``raw_path``), and the data dir."""
    root = default_data_dir(data_dir)
    ds = dict(cfg.dataset)
    if "path" in ds:
        ds["raw_path"] = ds["path"]
        ds["path"] = str(cfg.resolve_path(ds["path"], root))
    return ds, root


def open_task_data(cfg: TaskConfig, catalog: Catalog, data_dir: str | Path | None = None) -> SampleSet:
    """Resolve the task's dataset path, hand it to the registered format loader, tie labels to the class names."""
    ds, root = resolve_dataset(cfg, data_dir)
    loader = catalog.formats.get(ds["format"])
    return _checked(cfg, ds, loader(ds, root))


def _checked(cfg: TaskConfig, ds: dict, samples: SampleSet) -> SampleSet:
    if len(samples) == 0:
        raise DatasetNotFound(f"task {cfg.task!r}: dataset at {ds.get('path', '?')} holds no images")
    apply_task_classnames(cfg, samples)
    return samples


def preflight(cfg: TaskConfig, catalog: Catalog, data_dir: str | Path | None = None) -> str | None:
    """Check cheaply (no image decoded, no model, no network) that a task's data can be opened.

    Raises UsageError for an unknown format (with close matches) or a bad class-name list, DatasetNotFound (the
    message ``open_task_data`` would give) for missing data; returns a note when the task should be skipped
    rather than failed (e.g. ``viewpoint`` on a single-view COVAR build), else None. Data a format makes on
    first use (covar-shapes) and Hugging Face hub datasets pass without being made or contacted.
    """
    entry = catalog.formats.entry(cfg.dataset["format"])
    check = entry.extra.get("preflight")
    if cfg.classnames is not None:
        explicit_classnames(cfg)
    if check is None:
        return None
    ds, root = resolve_dataset(cfg, data_dir)
    found = check(ds, root)
    if isinstance(found, SampleSet):
        _checked(cfg, ds, found)
        return None
    return found


def data_status(cfg: TaskConfig, catalog: Catalog, data_dir: str | Path | None = None) -> tuple[str, str]:
    """(status, detail) of a task's data, as cheap as :func:`preflight`: ``present``, ``on first use`` (generated
    or downloaded by the run), ``skipped`` (with the note), ``missing`` or ``error`` (with the one-line reason)."""
    try:
        note = preflight(cfg, catalog, data_dir)
    except DatasetNotFound as exc:
        return "missing", str(exc)
    except UsageError as exc:
        return "error", str(exc)
    if note:
        return "skipped", note
    ds, _root = resolve_dataset(cfg, data_dir)
    where = str(ds.get("path") or ds.get("hf_id") or "")
    if ds.get("path") and not Path(ds["path"]).exists():
        return "on first use", where
    return "present", where


# ---- class names and labels ----------------------------------------------------------------------------
def explicit_classnames(cfg: TaskConfig) -> list[str] | None:
    """The task's explicit ``classnames`` (inline, shipped name or file), or None when the dataset names them."""
    if cfg.classnames is None:
        return None

    names = load_list("classnames", cfg.classnames, cfg.source.parent if cfg.source else None)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise UsageError(f"task {cfg.task!r}: classnames must be a non-empty list of strings")
    return names


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").casefold().split())


def _short(names: list[str], n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return f"[{shown}{f', ... {len(names) - n} more' if len(names) > n else ''}]"


def label_permutation(dataset_names: list[str], task_names: list[str], task: str) -> dict[int, int] | None:
    """Dataset label -> task label when the names match as a set (``_`` as space, any case); None: positional.

    Counts that differ raise UsageError naming both lists, and so do lists where most of the shared names sit at
    other positions (a reordered list with a renamed class: positional labels would be wrong). A stray shared
    name elsewhere is tolerated: ImageNet's WordNet and curated lists share "missile" at different indices.
    """
    ours, theirs = [_norm(n) for n in dataset_names], [_norm(n) for n in task_names]
    if len(set(ours)) == len(ours) == len(theirs) == len(set(theirs)) and set(ours) == set(theirs):
        where = {name: i for i, name in enumerate(theirs)}
        return {i: where[name] for i, name in enumerate(ours)}
    lists = f"task classnames {_short(task_names)}, dataset classes {_short(dataset_names)}"
    if len(ours) != len(theirs):
        raise UsageError(
            f"task {task!r}: {len(task_names)} class names for {len(dataset_names)} dataset classes: {lists}"
        )
    known = set(theirs)
    shared = [i for i, name in enumerate(ours) if name in known]
    moved = [dataset_names[i] for i in shared if theirs[i] != ours[i]]
    if moved and 2 * len(moved) > len(shared):
        raise UsageError(
            f"task {task!r}: dataset class {moved[0]!r} is at another position in the task's "
            f"classnames, so labels would be wrong; list the same names or none: {lists}"
        )
    return None


def apply_task_classnames(cfg: TaskConfig, samples: SampleSet) -> None:
    """Make labels follow the task's explicit class-name list, and record how (``samples.label_mapping``)."""
    names = explicit_classnames(cfg)
    if names is None:
        samples.label_mapping = None
        return
    perm = label_permutation(list(samples.classnames), names, cfg.task) if samples.classnames else None
    if perm is not None:
        samples.samples = [Sample(s.id, perm.get(s.label, s.label), s.meta) for s in samples.samples]
    samples.classnames = list(names)
    samples.label_mapping = "by_name" if perm is not None else "positional"


# ---- built-in formats ----------------------------------------------------------------------------------
def _image_files(folder: Path) -> list[Path]:
    """Regular image files only (``is_file`` is False for FIFOs, devices and sockets, even behind a link)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_imagefolder(ds: dict, data_dir: Path) -> SampleSet:
    """``<path>/<class>/<image>``; classes in sorted folder order (torchvision's convention).

    A task that lists ``classnames`` gets its labels tied to them by name when they match (``open_task_data``).
    """
    root = Path(ds["path"])
    if ds.get("split"):
        root = root / ds["split"]
    if not root.is_dir():
        raise DatasetNotFound(
            f"image folder not found: {root} (expected <root>/<class>/<images>; set --data-dir or the task's "
            "dataset.path)"
        )
    classes = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    if not classes:
        raise DatasetNotFound(f"image folder {root} has no class sub-folders")
    samples = [
        Sample(str(f.relative_to(root)), label) for label, cls in enumerate(classes) for f in _image_files(root / cls)
    ]
    return SampleSet(samples, [c.replace("_", " ") for c in classes], root, f"imagefolder {root}")


def preflight_imagefolder(ds: dict, data_dir: Path) -> SampleSet:
    """Listing the folders is cheap: the loader itself is the check."""
    return load_imagefolder(ds, data_dir)


class HFSampleSet(SampleSet):
    """Samples held in a Hugging Face ``datasets.Dataset`` (memory-mapped Arrow, picklable)."""

    def __init__(self, dataset, image_key: str, samples, classnames, description):
        super().__init__(samples, classnames, None, description)
        self.dataset, self.image_key = dataset, image_key

    def open_image(self, index: int):
        return as_rgb(self.dataset[int(self.samples[index].id)][self.image_key])

    def open_mask(self, index: int):
        key = self.samples[index].meta.get("mask_key")
        return as_mask(self.dataset[int(self.samples[index].id)][key]) if key else None

    def fingerprint(self) -> str:
        h = hashlib.sha256(str(getattr(self.dataset, "_fingerprint", "")).encode())
        for s in self.samples:
            h.update(f"{s.id}\t{s.label}\n".encode())
        return "sha256:" + h.hexdigest()[:16]


def _looks_local(raw: str) -> bool:
    """A dataset value that can only be a path (hub ids are ``name`` or ``org/name``)."""
    text = str(raw)
    return (
        os.path.isabs(text) or text.startswith((".", "~")) or "\\" in text or text.count("/") > 1 or text.endswith("/")
    )


def _hf_local_missing(raw: str, path: Path | None) -> DatasetNotFound:
    return DatasetNotFound(
        f"Hugging Face dataset {raw!r} not found: no folder {path or raw} (expected a save_to_disk "
        "folder or an image folder there, or a hub id ORG/NAME)"
    )


def _hf_open(ds: dict):
    """The ``datasets`` object behind a task: a save_to_disk folder, a local image folder, or a hub dataset."""
    import datasets  # lazy: optional dependency, imported where used

    raw = ds.get("raw_path", ds.get("path"))
    path = Path(ds["path"]) if ds.get("path") else None
    split = ds.get("split", "test")
    if path is not None and not path.exists() and _looks_local(str(raw)):
        raise _hf_local_missing(str(raw), path)
    try:
        if path is not None and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
            return datasets.load_from_disk(str(path))
        if path is not None and path.is_dir():
            return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
        return datasets.load_dataset(raw, ds.get("name"), split=split, revision=ds.get("revision"))
    except FileNotFoundError as exc:
        raise DatasetNotFound(f"Hugging Face dataset {raw!r} not found locally or on the hub ({exc})") from exc
    except Exception as exc:  # hub errors come in many types; one line each
        raise DatasetNotFound(f"could not load Hugging Face dataset {raw!r}: {str(exc).splitlines()[0]}") from exc


def hf_split(ds: dict, columns: Sequence[str]) -> Any:
    """The task's split (``split``, default ``test``) of a Hugging Face dataset, checked to hold ``columns``;
    a missing split or column is one line naming what there is."""
    import datasets  # lazy: optional dependency, imported where used

    raw, split = ds.get("raw_path", ds.get("path")), ds.get("split", "test")
    data = _hf_open(ds)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UsageError(f"dataset {raw!r} has no split {split!r}; splits: {', '.join(data)}")
        data = data[split]
    for key in columns:
        if key not in data.column_names:
            raise UsageError(f"dataset {raw!r} has no column {key!r}; columns: {', '.join(data.column_names)}")
    return data


def json_object(line: str, where: str, required: Sequence[str], error: type[Exception]) -> dict[str, Any]:
    """One JSON-lines record: a JSON object holding ``required`` keys, else ``error`` naming ``where``
    (file:line). Shared by the line-oriented formats (covar metadata.jsonl, retrieval captions.jsonl); parsed by
    the one bounded reader, so a line nested 100,000 deep is a ``file:line`` error, not a crash."""
    try:
        rec = parse_json(line, where)
    except JsonFormatError as exc:
        raise error(str(exc)) from None
    if not isinstance(rec, dict):
        raise error(f"{where}: each line must be a JSON object, got {type(rec).__name__}")
    for key in required:
        if key not in rec:
            raise error(f"{where}: missing required key {key!r}")
    return rec


def load_hf(ds: dict, data_dir: Path) -> SampleSet:
    """A Hugging Face dataset: a hub id, a ``save_to_disk`` folder, or a local image folder.

    Class names come from the label column's ``ClassLabel`` names (or sorted string labels); a task that lists
    ``classnames`` gets its labels tied to them by name when they match (``open_task_data``).
    """
    raw, split = ds.get("raw_path", ds.get("path")), ds.get("split", "test")
    image_key, label_key = ds.get("image_key", "image"), ds.get("label_key", "label")
    data = hf_split(ds, (image_key, label_key))
    feature = data.features[label_key]
    classnames = list(feature.names) if hasattr(feature, "names") else None
    labels = data[label_key]
    if classnames is None and labels and isinstance(labels[0], str):  # string labels: sorted, as imagefolder
        classnames = sorted(set(labels))
        position = {name: i for i, name in enumerate(classnames)}
        labels = [position[y] for y in labels]
    samples = [Sample(str(i), int(y)) for i, y in enumerate(labels)]
    return HFSampleSet(data, image_key, samples, classnames, f"hf {raw} [{split}]")


def preflight_hf(ds: dict, data_dir: Path) -> None:
    """A local path must exist; a hub id is never contacted here (the run reports hub errors per task)."""
    raw = ds.get("raw_path", ds.get("path"))
    path = Path(ds["path"]) if ds.get("path") else None
    if path is not None and not path.exists() and _looks_local(str(raw)):
        raise _hf_local_missing(str(raw), path)
