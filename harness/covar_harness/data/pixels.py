"""Pixels: any decoded image as 8-bit RGB or as an 8-bit mask, high bit depths scaled rather than clipped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from covar_harness.common.safe_files import open_regular

if TYPE_CHECKING:
    from PIL import Image


def _stretch(arr, lo: float, hi: float):
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8) if hi <= 0 else np.full(arr.shape, min(255, round(hi)), np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_8bit(im: Image.Image) -> Image.Image:
    """High-bit-depth images (``I;16*``, ``I``, ``F``) as 8-bit ``L``, scaled by the mode's range; others as given.

    PIL's own ``convert`` clips these modes at 255, so a 16-bit photo reaches the model all white (or black).
    ``I;16``: /257. ``I``: kept when within 0..255, else stretched min..max. ``F``: x255 when within 0..1, else
    stretched min..max. Non-finite values become the nearest finite extreme.
    """
    if not (im.mode.startswith("I;16") or im.mode in ("I", "F")):
        return im

    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return Image.fromarray(np.round(arr.astype(np.float32) / 257.0).astype(np.uint8), "L")
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return Image.fromarray(np.zeros(arr.shape, np.uint8), "L")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    arr = np.where(finite, arr, np.where(arr > 0, hi, lo))
    if im.mode == "F" and lo >= 0 and hi <= 1:
        out = np.round(arr * 255).astype(np.uint8)
    elif im.mode == "I" and lo >= 0 and hi <= 255:
        out = arr.astype(np.uint8)
    else:
        out = _stretch(arr, lo, hi)
    return Image.fromarray(out, "L")


def as_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB; palette, LA, CMYK and the like through PIL, high bit depths scaled first."""
    return to_8bit(im).convert("RGB")


def as_mask(im: Image.Image) -> Image.Image:
    """Any PIL image as an 8-bit mode ``L`` mask (white = object), high bit depths scaled first."""
    return to_8bit(im).convert("L")


def open_image_file(path: str | Path, convert: Callable[[Image.Image], Image.Image] = as_rgb) -> Image.Image:
    """Decode one image file (regular files only: a FIFO fails this image instead of hanging the run)."""

    with open_regular(path) as fh, Image.open(fh) as im:
        return convert(im)
