"""The ``imagenet9`` format: a Backgrounds Challenge (ImageNet-9) variation, with the release's foreground masks.

The test release (github.com/MadryLab/backgrounds_challenge, asset ``backgrounds_challenge_data.tar.gz`` under the
release tag ``data``) unpacks to ``bg_challenge/<variation>/val/<NN_class>/<name>.JPEG`` and, beside the
variations, ``bg_challenge/fg_mask/val/<NN_class>/<stem>.npy``: one 2-D 0/1 array per image of ``original``, the
object's pixels (``challenge_eval.py`` loads it with ``np.load`` and pastes ``original/val/<class>/<stem>.JPEG``
through it onto other backgrounds). Images are read as ``imagefolder`` reads them (same ids, labels and class
names); with ``fg_mask: true`` each image gets the mask of the original image whose object it shows:

- ``original`` and ``only_fg`` files carry the original's stem (``n01531178_3150.JPEG``);
- the ``mixed_*`` files are named after the composite, ``fg_<original stem>_bg_<background stem>.JPEG``
  (e.g. ``fg_n02497673_05944_bg_n02536864_02721.JPEG``), so their mask is the one of the stem between ``fg_`` and
  ``_bg_``. The same reading is what public loaders of the release do (zzzace2000/robust_cls_model
  ``cal_saliency_focus.py`` takes ``fname[3:18]``, the 15-character stem after ``fg_``).

Dataset key ``classifier``: ``imagenet1k`` (the default) is the reference protocol (``in9_eval.py``): a 1000-way
ImageNet classifier whose top-1 is mapped through ``in_to_in9.json`` (``data.samples.ClassMap``; 630 of the 1000
classes map to no IN-9 class and count as wrong), built over the curated ImageNet names and so shared with
``imagenet-1k/val``; it needs the release's folders ``00_dog`` ... ``08_fish``. ``superclasses`` scores zero-shot
9-way over the task's class names instead (the ``imagenet9-9way/*`` variant; not the published protocol).

``--attribution auto`` then runs CCI and the BG-Er / Fine-Er diagnosis on the dataset's own masks. An image whose
mask file is absent has none (no driver); the task record's ``dataset`` says how many images got one, and a
variation asked for masks that matched none says so in the result's notes (``SampleSet.notes``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import SMALL_FILE_MAX_BYTES, open_regular
from covar_harness.data.imagenet import curated_names
from covar_harness.data.resources import named
from covar_harness.data.samples import ClassMap, DatasetNotFound, SampleSet, load_imagefolder

if TYPE_CHECKING:
    from PIL import Image

FG_MASK = "fg_mask"
WHERE = (
    "download backgrounds_challenge_data.tar.gz (github.com/MadryLab/backgrounds_challenge, release tag 'data') "
    "and unpack it"
)
CLASSIFIERS = ("imagenet1k", "superclasses")  # the reference protocol first: the default
IN9_CLASSES = 9
MIXED_NAME = re.compile(r"^fg_(?P<fg>.+?)_bg_(?P<bg>.+)$")  # the mixed_* variations' composite file names


def npy_mask(path: Path) -> Image.Image:
    """A 0/1 (or boolean) ``.npy`` array as a mode-L mask, white = object; never unpickles."""

    with open_regular(path, SMALL_FILE_MAX_BYTES) as fh:
        arr = np.load(fh, allow_pickle=False)
    if arr.ndim == 3:  # an (H, W, C) copy: every channel holds the same mask
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{path} holds a {arr.shape} array, not an (H, W) mask")
    return Image.fromarray(((arr > 0) * 255).astype("uint8"), "L")


class BgChallengeSampleSet(SampleSet):
    """imagefolder samples whose ``mask`` meta names a ``.npy`` foreground mask (relative to the root)."""

    def open_mask(self, index: int) -> Image.Image | None:
        rel = self.samples[index].meta.get("mask")
        return npy_mask(self._path(rel)) if rel else None


def load_imagenet9(ds: dict, data_dir: Path) -> SampleSet:
    """``<path>/<split>/<NN_class>/<images>``; with ``fg_mask: true`` the masks in ``<path>/../fg_mask/<split>``;
    with ``classifier: imagenet1k`` (the default) the Backgrounds Challenge's 1000-way scoring (``in9_class_map``)."""
    try:
        found = load_imagefolder(ds, data_dir)
    except DatasetNotFound as exc:
        raise DatasetNotFound(f"{exc}; {WHERE} into the data dir") from None
    use_masks = ds.get("fg_mask", False)
    if not isinstance(use_masks, bool):
        raise UsageError(f"imagenet9: dataset.fg_mask must be true or false, got {use_masks!r}")
    classifier = ds.get("classifier", CLASSIFIERS[0])
    if classifier not in CLASSIFIERS:
        raise UsageError(f"imagenet9: dataset.classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
    out = BgChallengeSampleSet(found.samples, found.classnames, found.root, found.description)
    if classifier == "imagenet1k":
        check_folder_order(out)
        out.class_map = in9_class_map()
    if use_masks and found.root is not None:
        attach_masks(out, Path(ds["path"]).parent / FG_MASK / str(ds.get("split", "")))
    return out


def in9_class_map() -> ClassMap:
    """The reference protocol (``in9_eval.py``, ``tools/model_utils.py`` ``eval_model``): a 1000-way classifier over
    the curated ImageNet-1k names (the one ``imagenet-1k/val`` uses), its top-1 mapped through the shipped copy of
    ``in_to_in9.json``; the 630 ImageNet classes that map to -1 always count as wrong."""
    mapping = named("reference", "in_to_in9")
    return ClassMap(
        tuple(curated_names()),
        tuple(int(x) for x in mapping["in_to_in9"]),
        "in_to_in9.json (github.com/MadryLab/backgrounds_challenge)",
        "another ImageNet class (in_to_in9: -1)",
    )


def check_folder_order(found: SampleSet) -> None:
    """The map's labels are IN-9's class indices, so folder ``NN_class`` must hold label NN (00_dog ... 08_fish)."""
    names = found.classnames or []
    stray = [(i, n) for i, n in enumerate(names) if not (n[:2].isdigit() and int(n[:2]) == i)]
    if stray or len(names) != IN9_CLASSES:
        shown = f"folder {stray[0][1]!r} holds label {stray[0][0]}" if stray else f"{len(names)} class folders"
        raise UsageError(
            f"imagenet9: the release's 9 folders 00_dog ... 08_fish are needed for the 1000-way protocol ({shown}); "
            "set dataset.classifier: superclasses to score other folders zero-shot over their names"
        )


def attach_masks(out: SampleSet, masks: Path) -> None:
    """Each image's foreground mask (``mask_stem``), relative to the root; a note when none is found."""
    if not masks.is_dir():
        out.notes.append(f"no foreground masks: {masks} is not there (BG-Er / Fine-Er need them)")
        return
    assert out.root is not None
    n = 0
    for s in out.samples:
        mask = masks / Path(s.id).parent / f"{mask_stem(Path(s.id).stem)}.npy"
        if mask.is_file():
            s.meta["mask"] = Path(os.path.relpath(mask, out.root)).as_posix()
            n += 1
    out.description += f" ({n} foreground masks from {masks})"
    if n == 0:
        out.notes.append(
            f"no foreground masks: none of the {len(out)} images matched a mask in {masks} (BG-Er / Fine-Er need them)"
        )


def mask_stem(stem: str) -> str:
    """The stem of the original image whose object a file shows: a ``mixed_*`` file's ``fg_<stem>_bg_<stem>``
    gives its foreground's stem; any other file is its own original."""
    mixed = MIXED_NAME.match(stem)
    return mixed.group("fg") if mixed else stem


def preflight_imagenet9(ds: dict, data_dir: Path) -> SampleSet:
    """Listing the folders is cheap: the loader itself is the check."""
    return load_imagenet9(ds, data_dir)
