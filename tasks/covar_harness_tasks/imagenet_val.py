"""The ``imagenet_val`` format: the ILSVRC2012 (ImageNet-1k) validation set in the layouts users actually have.

ImageNet cannot be redistributed, so each user holds the 50,000 validation images in whichever layout their
download produced. Three are read, detected in this order under ``<root>`` (``<data-dir>/imagenet``):

- ``class_folders``: ``val/<wnid>/ILSVRC2012_val_*.JPEG``, after the common ``valprep.sh`` script (torchvision's
  ``ImageFolder`` layout);
- ``devkit``: ``val/ILSVRC2012_val_*.JPEG`` flat with the devkit (``ILSVRC2012_devkit_t12/data/``) beside.
  ``ILSVRC2012_img_val.tar`` holds the 50,000 files with no folder, so it is unpacked into ``val/``
  (``mkdir val && tar -xf ILSVRC2012_img_val.tar -C val``, what torchvision's ``parse_val_archive`` does; a copy
  unpacked straight into the root is refused with that command in the message).
  ``ILSVRC2012_validation_ground_truth.txt`` holds one 1-based ILSVRC2012_ID per image (line n =
  ``ILSVRC2012_val_<n:08d>``) and ``meta.mat`` maps an ILSVRC2012_ID to its wnid.
  The IDs are the devkit's own order, NOT the sorted wnids (ID 1 is n02119789, kit fox), so the labels go
  through ``meta.mat`` (read with scipy, a dependency of scikit-learn);
- ``kaggle``: the Kaggle release (imagenet-object-localization-challenge): ``LOC_val_solution.csv``
  (``ImageId,PredictionString``, the wnid first in each prediction string) and
  ``ILSVRC/Data/CLS-LOC/val/<ImageId>.JPEG``.

Labels are ImageNet-1k indices (sorted wnids, ``resources/reference/imagenet1k_wnids``), 1000-way over open_clip's
curated names, whatever subset of the images a copy holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import SMALL_FILE_MAX_BYTES, open_regular, read_text_capped
from covar_harness.data.imagenet import curated_names
from covar_harness.data.resources import named, parse_csv
from covar_harness.data.samples import IMAGE_EXTENSIONS, DatasetNotFound, Sample, SampleSet

VAL_FILE = re.compile(r"^ILSVRC2012_val_(\d{8})\.jpe?g$", re.IGNORECASE)
WNID = re.compile(r"^n\d{8}$")
DEVKIT = Path("ILSVRC2012_devkit_t12") / "data"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_CSV = "LOC_val_solution.csv"
KAGGLE_IMAGES = Path("ILSVRC") / "Data" / "CLS-LOC" / "val"
WHERE = (
    "ImageNet is not redistributable: download ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz from "
    "image-net.org (or the Kaggle imagenet-object-localization-challenge), unpack the devkit into {root} and the "
    "image tar, which has no folder inside, into {root}/val"
)


@dataclass(frozen=True)
class Layout:
    """One on-disk layout: ``found(root)`` is cheap (a few stats); ``read(root)`` gives (sample id, wnid) pairs."""

    name: str
    found: Callable[[Path], bool]
    read: Callable[[Path], list[tuple[str, str]]]


def _wnid_index() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(named("reference", "imagenet1k_wnids"))}


def _text(path: Path) -> str:
    try:
        return read_text_capped(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"imagenet_val: cannot read {path}: {exc}") from None


# ---- class_folders: val/<wnid>/<images> ----------------------------------------------------------------
def _class_folders(root: Path) -> list[Path]:
    val = root / "val"
    return [p for p in val.iterdir() if WNID.match(p.name) and p.is_dir()] if val.is_dir() else []


def _read_class_folders(root: Path) -> list[tuple[str, str]]:
    return [
        (f"val/{folder.name}/{f.name}", folder.name)
        for folder in sorted(_class_folders(root))
        for f in sorted(folder.iterdir())
        if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
    ]


# ---- devkit: val/ILSVRC2012_val_*.JPEG + ground truth + meta.mat ---------------------------------------
def ilsvrc_id_to_wnid(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the devkit's 1000 leaf synsets (``num_children == 0``) in ``meta.mat``."""
    from scipy.io import loadmat  # lazy: optional dependency, imported where used

    try:
        with open_regular(meta, SMALL_FILE_MAX_BYTES) as fh:
            synsets = np.atleast_1d(loadmat(fh, squeeze_me=True)["synsets"])
        rows = zip(synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"])
        return {int(i): str(w) for i, w, kids in rows if int(kids) == 0}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"imagenet_val: {meta} is not the devkit's meta.mat ({exc})") from None


def _flat_files(folder: Path) -> dict[int, str]:
    """Image number -> file name of the flat ``ILSVRC2012_val_<n>.JPEG`` files in ``folder``."""
    if not folder.is_dir():
        return {}
    out = {}
    for f in folder.iterdir():
        m = VAL_FILE.match(f.name)
        if m and f.is_file():
            out[int(m.group(1))] = f.name
    return out


def _devkit_found(root: Path) -> bool:
    return (root / DEVKIT / GROUND_TRUTH).is_file() and (root / "val").is_dir()


def _read_devkit(root: Path) -> list[tuple[str, str]]:
    if not (root / DEVKIT / "meta.mat").is_file():
        raise UsageError(f"imagenet_val: {root / DEVKIT / GROUND_TRUTH} needs meta.mat beside it (the devkit's)")
    ids = _text(root / DEVKIT / GROUND_TRUTH).split()
    wnids = ilsvrc_id_to_wnid(root / DEVKIT / "meta.mat")
    files = _flat_files(root / "val")
    out = []
    for n, name in sorted(files.items()):
        if not 1 <= n <= len(ids) or not ids[n - 1].isdigit() or int(ids[n - 1]) not in wnids:
            raise UsageError(f"imagenet_val: {name} has no valid ILSVRC2012_ID in {GROUND_TRUTH} ({len(ids)} lines)")
        out.append((f"val/{name}", wnids[int(ids[n - 1])]))
    return out


# ---- kaggle: LOC_val_solution.csv + ILSVRC/Data/CLS-LOC/val/ -------------------------------------------
def _read_kaggle(root: Path) -> list[tuple[str, str]]:
    rows = parse_csv(_text(root / KAGGLE_CSV))
    if rows and not {"ImageId", "PredictionString"} <= set(rows[0]):
        raise UsageError(f"imagenet_val: {root / KAGGLE_CSV} lacks the ImageId,PredictionString header")
    truth = {row["ImageId"]: (row["PredictionString"] or "").split()[:1] for row in rows}
    out = []
    for _, name in sorted(_flat_files(root / KAGGLE_IMAGES).items()):
        wnid = truth.get(Path(name).stem)
        if not wnid:
            raise UsageError(f"imagenet_val: {name} has no row in {KAGGLE_CSV}")
        out.append((f"{KAGGLE_IMAGES.as_posix()}/{name}", wnid[0]))
    return out


LAYOUTS = (
    Layout("class_folders", lambda root: bool(_class_folders(root)), _read_class_folders),
    Layout("devkit", _devkit_found, _read_devkit),
    Layout("kaggle", lambda root: (root / KAGGLE_CSV).is_file(), _read_kaggle),
)


def _missing(root: Path, why: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"ImageNet-1k validation not found at {root}: {why} (expected {root}/val/<wnid>/<images>, or "
        f"{root}/val/ILSVRC2012_val_*.JPEG with {root}/{DEVKIT.as_posix()}/{{{GROUND_TRUTH},meta.mat}}, or "
        f"{root}/{KAGGLE_CSV} with {root}/{KAGGLE_IMAGES.as_posix()}/; {WHERE.format(root=root)})"
    )


def detect_layout(root: Path) -> Layout:
    """The first layout whose marker files are under ``root``; DatasetNotFound naming all three otherwise."""
    if not root.is_dir():
        raise _missing(root, "no such folder")
    for layout in LAYOUTS:
        if layout.found(root):
            return layout
    if any(root.glob("ILSVRC2012_val_*.JPEG")):
        raise _missing(
            root,
            "the validation images lie flat in it, as ILSVRC2012_img_val.tar unpacks (the tar has no folder); move "
            "them into val/ (mkdir val && mv ILSVRC2012_val_*.JPEG val/, or unpack with tar -xf "
            "ILSVRC2012_img_val.tar -C val)",
        )
    raise _missing(root, "none of the three layouts is there")


def load_imagenet_val(ds: dict, data_dir: Path) -> SampleSet:
    """The validation images present, labelled by ImageNet-1k index, 1000-way over the curated names."""
    root = Path(ds["path"])
    layout = detect_layout(root)
    index = _wnid_index()
    pairs = layout.read(root)
    unknown = sorted({wnid for _, wnid in pairs if wnid not in index})
    if unknown:
        raise UsageError(f"imagenet_val: {unknown[0]} is not an ImageNet-1k wnid ({len(unknown)} such)")
    samples = [Sample(rel, index[wnid], {"wnid": wnid}) for rel, wnid in pairs]
    return SampleSet(samples, curated_names(), root, f"imagenet_val {root} ({layout.name} layout, 1000-way)")


def preflight_imagenet_val(ds: dict, data_dir: Path) -> SampleSet:
    """Listing the files and reading the label files is cheap next to 50,000 images: the loader is the check."""
    return load_imagenet_val(ds, data_dir)
