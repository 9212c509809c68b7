"""The ``imagenet9`` format: a Backgrounds Challenge (ImageNet-9) variation, with the release's foreground masks.

The release (github.com/MadryLab/backgrounds_challenge, ``bg_challenge.tar.gz``) unpacks to
``bg_challenge/<variation>/val/<NN_class>/<name>.JPEG`` and, beside the variations,
``bg_challenge/fg_mask/val/<NN_class>/<name>.npy``: one 2-D 0/1 array per image of ``original``, the object's
pixels (``challenge_eval.py`` loads it with ``np.load`` and pastes ``original/val/<class>/<name>.JPEG`` through it
onto other backgrounds). Images are read as ``imagefolder`` reads them (same ids, labels and class names); with
``fg_mask: true`` an image whose ``<NN_class>/<stem>.npy`` exists in ``fg_mask/<split>`` gets it as its mask, so
``--attribution auto`` runs CCI and the BG-Er / Fine-Er diagnosis on the dataset's own masks. Images without a
mask file have none (no driver); a variation whose file names do not match gets no masks at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import SMALL_FILE_MAX_BYTES, open_regular
from covar_harness.data.samples import DatasetNotFound, SampleSet, load_imagefolder

if TYPE_CHECKING:
    from PIL import Image

FG_MASK = "fg_mask"
WHERE = "download bg_challenge.tar.gz (github.com/MadryLab/backgrounds_challenge, release v1.0) and unpack it"


def npy_mask(path: Path) -> Image.Image:
    """A 0/1 (or boolean) ``.npy`` array as a mode-L mask, white = object; never unpickles."""
    import numpy as np
    from PIL import Image

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
    """``<path>/<split>/<NN_class>/<images>``; with ``fg_mask: true`` the masks in ``<path>/../fg_mask/<split>``."""
    try:
        found = load_imagefolder(ds, data_dir)
    except DatasetNotFound as exc:
        raise DatasetNotFound(f"{exc}; {WHERE} into the data dir") from None
    use_masks = ds.get("fg_mask", False)
    if not isinstance(use_masks, bool):
        raise UsageError(f"imagenet9: dataset.fg_mask must be true or false, got {use_masks!r}")
    out = BgChallengeSampleSet(found.samples, found.classnames, found.root, found.description)
    masks = Path(ds["path"]).parent / FG_MASK / str(ds.get("split", ""))
    if not use_masks or not masks.is_dir() or found.root is None:
        return out
    n = 0
    for s in out.samples:
        mask = masks / Path(s.id).parent / f"{Path(s.id).stem}.npy"
        if mask.is_file():
            s.meta["mask"] = Path(os.path.relpath(mask, found.root)).as_posix()
            n += 1
    out.description += f" ({n} foreground masks from {masks})"
    return out


def preflight_imagenet9(ds: dict, data_dir: Path) -> SampleSet:
    """Listing the folders is cheap: the loader itself is the check."""
    return load_imagenet9(ds, data_dir)
