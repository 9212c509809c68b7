"""The ``imagenet_wnids`` dataset format: ImageNet distribution shifts stored as ``<root>/<wnid>/<images>``.

ImageNet-R (Hendrycks et al. 2021) and ImageNet-A (Hendrycks et al. 2021) each cover a 200-class subset of
ImageNet-1k, and their protocol scores only those 200 classes (the official code masks the other 800 logits).
The zero-shot classifier here is built over the classes present only, which is the same thing: the argmax over
200 class embeddings is the argmax of the 1000-way logits with the other 800 masked.

The class list is read from the dataset folder itself (the folder names are the wnids); the official 200-wnid
lists are not shipped. Each wnid is mapped to its ImageNet-1k index (``resources/reference/imagenet1k_wnids.json``)
and named with open_clip's curated ImageNet names (``classnames/imagenet1k``), the names CLIP's own ImageNet
evaluation uses. Labels follow ImageNet index order (the sorted wnids).

Dataset keys (task YAML ``dataset:``):
  folder_names: wnid | index     class folders named by wnid (R, A, Sketch) or by ImageNet index 0-999
                                 (ImageNet-V2's ``imagenetv2-matched-frequency-format-val/<index>/``)
  label_space: folders | imagenet1k   only the classes present (R, A: the 200-class protocol) or all 1000
                                 (V2, Sketch: label = ImageNet index, whatever folders a copy holds)
"""

from __future__ import annotations

import re
from pathlib import Path

from covar_harness.data import IMAGE_EXTENSIONS, DatasetNotFound, Sample, SampleSet
from covar_harness.imagenet import curated_names
from covar_harness.registry import UsageError
from covar_harness.resources import named

WNID = re.compile(r"^n\d{8}$")
INDEX = re.compile(r"^\d{1,3}$")
FOLDER_NAMES = ("wnid", "index")
LABEL_SPACES = ("folders", "imagenet1k")
SOURCES = {
    "imagenet-r": "download https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar and unpack it",
    "imagenet-a": "download https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar and unpack it",
    "imagenetv2-matched-frequency-format-val": "unpack imagenetv2-matched-frequency.tar.gz (github.com/modestyachts/"
    "ImageNetV2)",
    "sketch": "unpack ImageNet-Sketch.zip (github.com/HaohanWang/ImageNet-Sketch), which holds sketch/<wnid>/",
}


def imagenet_wnid_index() -> dict[str, int]:
    """wnid -> ImageNet-1k index, from the shipped wnid list (label order)."""
    return {wnid: i for i, wnid in enumerate(named("reference", "imagenet1k_wnids"))}


def _missing(path: Path, why: str) -> DatasetNotFound:
    hint = SOURCES.get(path.name, "unpack the dataset")
    return DatasetNotFound(
        f"{path.name} not found: {why} (expected {path}/<class folder>/<images>, e.g. {path}/n01443537/ or "
        f"{path}/1/; {hint} into the data dir, or set --data-dir / dataset.path)"
    )


def _option(ds: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = str(ds.get(key, allowed[0]))
    if value not in allowed:
        raise UsageError(f"imagenet_wnids: dataset.{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def class_folders(root: Path, folder_names: str = "wnid") -> list[tuple[str, int]]:
    """(folder, ImageNet index) of every class folder, in index order; anything else (a README) is skipped.
    A folder that names no ImageNet-1k class raises UsageError."""
    if not root.is_dir():
        raise _missing(root, "no such folder")
    pattern = WNID if folder_names == "wnid" else INDEX
    folders = [p.name for p in root.iterdir() if pattern.match(p.name) and p.is_dir()]
    if not folders:
        raise _missing(root, f"no class sub-folders named by {folder_names}")
    known = imagenet_wnid_index()
    index = {f: known.get(f, -1) if folder_names == "wnid" else int(f) for f in folders}
    unknown = sorted(f for f, i in index.items() if not 0 <= i < len(known))
    if unknown:
        raise UsageError(f"{root}: folder {unknown[0]} names no ImageNet-1k class ({len(unknown)} such folders)")
    return sorted(index.items(), key=lambda item: item[1])


def load_imagenet_wnids(ds: dict, data_dir: Path) -> SampleSet:
    """``<path>/<class folder>/<images>``: labels by position among the folders present (``label_space:
    folders``, the R/A protocol) or by ImageNet index over all 1000 curated names (``imagenet1k``)."""
    root = Path(ds["path"])
    folder_names = _option(ds, "folder_names", FOLDER_NAMES)
    full = _option(ds, "label_space", LABEL_SPACES) == "imagenet1k"
    folders = class_folders(root, folder_names)
    wnids = list(named("reference", "imagenet1k_wnids"))
    samples = [
        Sample(f"{folder}/{f.name}", index if full else label, {"wnid": wnids[index]})
        for label, (folder, index) in enumerate(folders)
        for f in sorted((root / folder).iterdir())
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    ]
    names = curated_names() if full else [curated_names()[index] for _, index in folders]
    space = "all 1000 ImageNet classes" if full else "classes = folders present"
    return SampleSet(samples, names, root, f"imagenet_wnids {root} ({len(folders)} class folders, {space})")


def preflight_imagenet_wnids(ds: dict, data_dir: Path) -> SampleSet:
    """Listing the folders is cheap: the loader itself is the check."""
    return load_imagenet_wnids(ds, data_dir)
