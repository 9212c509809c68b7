"""The ``imagenet_wnids`` dataset format: ImageNet distribution shifts stored as ``<root>/<wnid>/<images>``.

ImageNet-R (Hendrycks et al. 2021) and ImageNet-A (Hendrycks et al. 2021) each cover a 200-class subset of
ImageNet-1k, and their protocol scores only those 200 classes (the official code masks the other 800 logits).
The zero-shot classifier here is built over those 200 classes only, which is the same thing: the argmax over
200 class embeddings is the argmax of the 1000-way logits with the other 800 masked.

The official 200-wnid lists ship in ``resources/reference/imagenet_{r,a}_wnids.json`` (read from the authors'
``eval.py``, cross-checked with WiSE-FT; each file names its source and commit), in the protocol's order
(ImageNet index order, which is also ImageFolder's sorted order). Each wnid is mapped to its ImageNet-1k index
(``resources/reference/imagenet1k_wnids.json``) and named with open_clip's curated ImageNet names
(``classnames/imagenet1k``), the names CLIP's own ImageNet evaluation uses.

Dataset keys (task YAML ``dataset:``):
  folder_names: wnid | index     class folders named by wnid (R, A, Sketch) or by ImageNet index 0-999
                                 (ImageNet-V2's ``imagenetv2-matched-frequency-format-val/<index>/``)
  label_space: folders | imagenet1k | imagenet-r | imagenet-a
                                 the classifier's classes: the folders present (the default), all 1000 (V2,
                                 Sketch: label = ImageNet index), or an official 200-class list (label = position
                                 in it; a folder outside the list is an error, a list class without a folder is
                                 kept: the task record's ``dataset`` says how many classes had images)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from covar_harness.catalog.registry import UsageError
from covar_harness.data.imagenet import curated_names
from covar_harness.data.resources import named
from covar_harness.data.samples import IMAGE_EXTENSIONS, DatasetNotFound, Sample, SampleSet

WNID = re.compile(r"^n\d{8}$")
INDEX = re.compile(r"^\d{1,3}$")
FOLDER_NAMES = ("wnid", "index")
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


def official_wnids(name: str) -> list[str]:
    """The official 200-wnid list of ``imagenet-r`` / ``imagenet-a``, in the protocol's class order."""
    return list(named("reference", f"{name.replace('-', '_')}_wnids")["wnids"])


# label_space -> the classifier's classes (ImageNet-1k indices, in label order) given the folders' indices
def _present(found: list[int]) -> list[int]:
    return found


def _all_1000(found: list[int]) -> list[int]:
    return list(range(len(imagenet_wnid_index())))


def _official(name: str) -> Callable[[list[int]], list[int]]:
    def classes(found: list[int]) -> list[int]:
        index = imagenet_wnid_index()
        return [index[wnid] for wnid in official_wnids(name)]

    return classes


LABEL_SPACES: dict[str, Callable[[list[int]], list[int]]] = {
    "folders": _present,
    "imagenet1k": _all_1000,
    "imagenet-r": _official("imagenet-r"),
    "imagenet-a": _official("imagenet-a"),
}


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


def _labels(root: Path, space: str, folders: list[tuple[str, int]]) -> tuple[list[int], dict[int, int]]:
    """The classifier's classes (ImageNet indices) and ImageNet index -> label; a folder outside them is refused,
    since its images would have no class to be scored against."""
    classes = LABEL_SPACES[space]([index for _, index in folders])
    label = {index: i for i, index in enumerate(classes)}
    stray = [folder for folder, index in folders if index not in label]
    if stray:
        raise UsageError(
            f"{root}: folder {stray[0]} is not one of the {len(classes)} {space} classes ({len(stray)} such "
            f"folders); remove them, or set dataset.label_space: folders to score the folders present"
        )
    return classes, label


def load_imagenet_wnids(ds: dict, data_dir: Path) -> SampleSet:
    """``<path>/<class folder>/<images>``, labelled by position in the ``label_space``'s class list: the folders
    present (default), all 1000 ImageNet classes (label = index), or the official ImageNet-R/-A 200."""
    root = Path(ds["path"])
    folder_names = _option(ds, "folder_names", FOLDER_NAMES)
    space = _option(ds, "label_space", tuple(LABEL_SPACES))
    folders = class_folders(root, folder_names)
    classes, label = _labels(root, space, folders)
    wnids = list(named("reference", "imagenet1k_wnids"))
    samples = [
        Sample(f"{folder}/{f.name}", label[index], {"wnid": wnids[index]})
        for folder, index in folders
        for f in sorted((root / folder).iterdir())
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    ]
    names = [curated_names()[index] for index in classes]
    with_images = len({s.label for s in samples})
    about = f"{len(folders)} class folders; {len(classes)} classes ({space}), {with_images} with images"
    return SampleSet(samples, names, root, f"imagenet_wnids {root} ({about})")


def preflight_imagenet_wnids(ds: dict, data_dir: Path) -> SampleSet:
    """Listing the folders is cheap: the loader itself is the check."""
    return load_imagenet_wnids(ds, data_dir)
