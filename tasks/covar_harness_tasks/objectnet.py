"""The ``objectnet`` format: ObjectNet (Barbu et al. 2019) restricted to its classes that overlap ImageNet-1k.

Protocol: CLIP_benchmark's (github.com/LAION-AI/CLIP_benchmark, ``clip_benchmark/datasets/objectnet.py``, adapted
from wise-ft), the one open_clip's published ObjectNet numbers use. An ObjectNet class takes part when its label is
a key of ``mappings/objectnet_to_imagenet_1k.json`` (113 of the 313 classes); the images of the other classes are
left out. Labels are positions among the taking-part class *folders* in sorted order, and the class names are the
ObjectNet labels (``mappings/folder_to_objectnet_label.json``) in lower case. The classifier is zero-shot over those
113 names (not over the 1000 ImageNet classes: CLIP_benchmark builds it from ``dataset.classes``).

**[open]** wise-ft and model-soups score the 1000-way ImageNet classifier instead, each ObjectNet class taking the
max logit of its mapped ImageNet classes, and crop a 2-pixel border (ObjectNet's 1-pixel red frame). That needs a
logit projection the harness's one-column-per-class classifier does not have, so it is not offered; the border
crop is (``crop_border``, default 0 as in CLIP_benchmark).

Layout, as ``objectnet-1.0.zip`` unpacks (objectnet.dev)::

    objectnet-1.0/images/<folder>/<image>.png
    objectnet-1.0/mappings/folder_to_objectnet_label.json     {"alarm_clock": "Alarm clock", ...}
    objectnet-1.0/mappings/objectnet_to_imagenet_1k.json      {"Alarm clock": "analog clock; digital clock", ...}
    objectnet-1.0/mappings/imagenet_to_label_2012_v2          (not needed by this protocol)
    objectnet-1.0/mappings/pytorch_to_imagenet_2012_id.json   (not needed by this protocol)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import read_json
from covar_harness.data.samples import IMAGE_EXTENSIONS, DatasetNotFound, Sample, SampleSet

if TYPE_CHECKING:
    from PIL import Image

RELEASE = "objectnet-1.0"
FOLDER_TO_LABEL = "folder_to_objectnet_label.json"
TO_IMAGENET = "objectnet_to_imagenet_1k.json"
WHERE = (
    "download objectnet-1.0.zip from objectnet.dev (accept its license; the site gives the zip's password) and "
    "unzip it into the data dir, or set --data-dir / dataset.path"
)


class CroppedSampleSet(SampleSet):
    """Images with a ``border``-pixel frame cut off every side (ObjectNet's 1-pixel red border, in wise-ft)."""

    border = 0

    def open_image(self, index: int) -> Image.Image:
        image = super().open_image(index)
        b = self.border
        if b and image.width > 2 * b and image.height > 2 * b:
            image = image.crop((b, b, image.width - b, image.height - b))
        return image


def release_root(path: Path) -> Path:
    """The ``objectnet-1.0`` folder: ``path`` itself or, as CLIP_benchmark's root, its child of that name."""
    if not (path / "mappings").is_dir() and (path / RELEASE / "mappings").is_dir():
        return path / RELEASE
    if not (path / "mappings").is_dir() or not (path / "images").is_dir():
        raise DatasetNotFound(
            f"ObjectNet not found at {path}: expected {path}/images/<class folder>/<images> and "
            f"{path}/mappings/{{{FOLDER_TO_LABEL},{TO_IMAGENET}}}; {WHERE}"
        )
    return path


def _mapping(path: Path) -> dict[str, str]:
    try:
        value = read_json(path)
    except FileNotFoundError:
        raise DatasetNotFound(f"ObjectNet mapping {path} not found; {WHERE}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"objectnet: cannot read {path}: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise UsageError(f"objectnet: {path} is not a JSON object of strings")
    return value


def overlap_classes(root: Path) -> list[tuple[str, str]]:
    """(folder, ObjectNet label) of every class mapped to ImageNet-1k, in sorted folder order (= label order)."""
    folder_to_label = _mapping(root / "mappings" / FOLDER_TO_LABEL)
    mapped = _mapping(root / "mappings" / TO_IMAGENET)
    label_to_folder = {label: folder for folder, label in folder_to_label.items()}
    unknown = sorted(set(mapped) - set(label_to_folder))
    if unknown:
        raise UsageError(f"objectnet: {TO_IMAGENET} names {unknown[0]!r}, which {FOLDER_TO_LABEL} does not have")
    return sorted((label_to_folder[label], label) for label in mapped)


def load_objectnet(ds: dict, data_dir: Path) -> SampleSet:
    """The images of the ImageNet-overlapping classes, 113-way over their lower-cased ObjectNet labels."""
    root = release_root(Path(ds["path"]))
    border = ds.get("crop_border", 0)
    if not isinstance(border, int) or isinstance(border, bool) or not 0 <= border <= 16:
        raise UsageError(f"objectnet: dataset.crop_border must be an integer 0-16 (pixels), got {border!r}")
    classes = overlap_classes(root)
    samples = [
        Sample(f"images/{folder}/{f.name}", label, {"objectnet_class": name})
        for label, (folder, name) in enumerate(classes)
        if (root / "images" / folder).is_dir()
        for f in sorted((root / "images" / folder).iterdir())
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    ]
    crop = f", {border}-pixel border cropped" if border else ""
    out = CroppedSampleSet(
        samples, [name.lower() for _, name in classes], root, f"objectnet {root} ({len(classes)} classes{crop})"
    )
    out.border = border
    return out


def preflight_objectnet(ds: dict, data_dir: Path) -> SampleSet:
    """Two small JSON files and a folder listing: the loader itself is the check."""
    return load_objectnet(ds, data_dir)
