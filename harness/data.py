"""Task data: the samples of a task, however they are stored, behind one small class.

A dataset format (``dataset.format`` in task YAML) is a loader registered through ``register_dataset_formats``
that returns a :class:`SampleSet`. Images are opened lazily, in DataLoader workers; an unreadable image is
the evaluator's business (skipped and counted), not the format's.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness.registry import UsageError

if TYPE_CHECKING:
    from PIL import Image

    from covar_harness.plugin_manager import Catalog
    from covar_harness.taskconfig import TaskConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DATA_ENV = "COVAR_HARNESS_DATA"


class DatasetNotFound(UsageError):
    """The data a task needs is not where it should be; the message says where we looked and how to get it."""


@dataclass
class Sample:
    id: str  # path relative to the dataset root, or an id
    label: int
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. mask (relative path), source_id, variation


class SampleSet:
    """The samples of one task plus how to open them. Picklable, so DataLoader workers can use it."""

    def __init__(self, samples: list[Sample], classnames: list[str] | None, root: Path | None, description: str = ""):
        self.samples = samples
        self.classnames = classnames
        self.root = root
        self.description = description

    def __len__(self) -> int:
        return len(self.samples)

    def open_image(self, index: int) -> "Image.Image":
        from PIL import Image

        with Image.open(self._path(self.samples[index].id)) as im:
            return im.convert("RGB")

    def open_mask(self, index: int) -> "Image.Image | None":
        """The foreground mask (mode L, white = object) when the dataset ships one."""
        rel = self.samples[index].meta.get("mask")
        if not rel:
            return None
        from PIL import Image

        with Image.open(self._path(rel)) as im:
            return im.convert("L")

    @property
    def has_masks(self) -> bool:
        return any(s.meta.get("mask") for s in self.samples)

    def _path(self, rel: str) -> Path:
        if self.root is None:
            raise ValueError("this sample set has no root folder")
        return self.root / rel

    def subset(self, indices: list[int]) -> "SampleSet":
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


def open_task_data(cfg: "TaskConfig", catalog: "Catalog", data_dir: str | Path | None = None) -> SampleSet:
    """Resolve the task's dataset path and hand it to the registered format loader."""
    root = default_data_dir(data_dir)
    ds = dict(cfg.dataset)
    if "path" in ds:
        resolved = cfg.resolve_path(ds["path"], root)
        ds["raw_path"] = ds["path"]
        ds["path"] = str(resolved)
    loader = catalog.formats.get(ds["format"])
    samples = loader(ds, root)
    if len(samples) == 0:
        raise DatasetNotFound(f"task {cfg.task!r}: dataset at {ds.get('path', '?')} holds no images")
    return samples


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_imagefolder(ds: dict, data_dir: Path) -> SampleSet:
    """``<path>/<class>/<image>``; classes in sorted folder order (torchvision's convention)."""
    root = Path(ds["path"])
    if ds.get("split"):
        root = root / ds["split"]
    if not root.is_dir():
        raise DatasetNotFound(
            f"image folder not found: {root} (expected <root>/<class>/<images>; set --data-dir or the task's dataset.path)"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetNotFound(f"image folder {root} has no class sub-folders")
    samples = [
        Sample(str(f.relative_to(root)), label)
        for label, cls in enumerate(classes)
        for f in _image_files(root / cls)
    ]
    return SampleSet(samples, [c.replace("_", " ") for c in classes], root, f"imagefolder {root}")


class HFSampleSet(SampleSet):
    """Samples held in a Hugging Face ``datasets.Dataset`` (memory-mapped Arrow, picklable)."""

    def __init__(self, dataset, image_key: str, samples, classnames, description):
        super().__init__(samples, classnames, None, description)
        self.dataset, self.image_key = dataset, image_key

    def open_image(self, index: int):
        image = self.dataset[int(self.samples[index].id)][self.image_key]
        return image.convert("RGB")

    def open_mask(self, index: int):
        key = self.samples[index].meta.get("mask_key")
        return self.dataset[int(self.samples[index].id)][key].convert("L") if key else None

    def fingerprint(self) -> str:
        h = hashlib.sha256(str(getattr(self.dataset, "_fingerprint", "")).encode())
        for s in self.samples:
            h.update(f"{s.id}\t{s.label}\n".encode())
        return "sha256:" + h.hexdigest()[:16]


def load_hf(ds: dict, data_dir: Path) -> SampleSet:
    """A Hugging Face dataset: a hub id, a ``save_to_disk`` folder, or a local image folder."""
    import datasets

    raw = ds.get("raw_path", ds.get("path"))
    path = Path(ds["path"]) if ds.get("path") else None
    split = ds.get("split", "test")
    image_key, label_key = ds.get("image_key", "image"), ds.get("label_key", "label")
    try:
        if path is not None and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
            data = datasets.load_from_disk(str(path))
        elif path is not None and path.is_dir():
            data = datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
        else:
            data = datasets.load_dataset(raw, ds.get("name"), split=split, revision=ds.get("revision"))
    except FileNotFoundError as exc:
        raise DatasetNotFound(f"Hugging Face dataset {raw!r} not found locally or on the hub ({exc})") from exc
    except Exception as exc:  # hub errors come in many types; one line each
        raise DatasetNotFound(f"could not load Hugging Face dataset {raw!r}: {str(exc).splitlines()[0]}") from exc
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UsageError(f"dataset {raw!r} has no split {split!r}; splits: {', '.join(data)}")
        data = data[split]
    for key in (image_key, label_key):
        if key not in data.column_names:
            raise UsageError(f"dataset {raw!r} has no column {key!r}; columns: {', '.join(data.column_names)}")
    feature = data.features[label_key]
    classnames = list(feature.names) if hasattr(feature, "names") else None
    labels = data[label_key]
    if classnames is None and labels and isinstance(labels[0], str):  # string labels: sorted, as imagefolder
        classnames = sorted(set(labels))
        position = {name: i for i, name in enumerate(classnames)}
        labels = [position[y] for y in labels]
    samples = [Sample(str(i), int(y)) for i, y in enumerate(labels)]
    return HFSampleSet(data, image_key, samples, classnames, f"hf {raw} [{split}]")
