"""Foreground masks in the model's frame (docs/design.md section 7.5): the model never sees the original frame,
so a mask reaches CCI's ``fg_fraction`` in two steps:

1. :func:`geometric_like` moves the mask into the model-input frame with the model's own resize / centre crop,
2. :func:`mask_to_patch_grid` averages it per patch: the fraction of each patch's pixels that are foreground.

:func:`mask_patch_fractions` does both. Only numpy and PIL are imported at module import (torchvision only when
a transform is replayed).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

# ---- masks in the model-input frame ------------------------------------------------------------------------
_GEOMETRIC = re.compile(r"Resize|Crop|Pad")


def as_fraction_image(mask: Image.Image) -> Image.Image:
    """Mode "F" with values in [0, 1]: "F" masks are taken as fractions already, other modes are 0..255."""
    if mask.mode == "F":
        return mask
    arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return Image.fromarray(arr, mode="F")


def geometric_like(
    preprocess: Callable, mask: Image.Image, input_size_hw: tuple[int, int] | None = None
) -> Image.Image:
    """The mask moved into the model-input frame as ``preprocess`` moves the image; mode "F", values in [0, 1].

    Three tiers, most exact first:

    1. torchvision ``Compose`` (open_clip's transforms): only its geometric steps (class names with Resize, Crop
       or Pad: Resize, CenterCrop, open_clip's ResizeKeepRatio / CenterCropOrPad) are applied, each copied with
       its interpolation switched to BOX, so a downscaled pixel holds the area fraction of foreground under it
       (exact for integer factors) and the crop/resize geometry is the transform's own. Colour conversion,
       ToTensor and Normalize are skipped. Random geometric steps cannot be matched and are an error.
    2. any other callable returning a (3, H, W) array-like (e.g. a Hugging Face image processor wrapped by the
       ``hf:`` adapter): the mask, as a grey RGB image, goes through the whole ``preprocess``; the per-channel
       affine normalisation is undone with a black and a white probe image. This follows any geometry the
       processor applies, with its own interpolation (clipped to [0, 1] against bicubic overshoot).
    3. when that fails (the preprocess is not per-channel affine, or raises): a plain resize of the mask to
       ``input_size_hw`` (the model's input size), which is only right for squash-resizing models; without
       ``input_size_hw`` the mask is returned unchanged.
    """
    fraction = as_fraction_image(mask)
    steps = getattr(preprocess, "transforms", None)
    if isinstance(steps, (list, tuple)):
        return _apply_geometric_steps(steps, fraction)
    probed = _through_preprocess(preprocess, fraction)
    if probed is not None:
        return probed
    if input_size_hw is not None:
        return fraction.resize((input_size_hw[1], input_size_hw[0]), Image.Resampling.BOX)
    return fraction


def _apply_geometric_steps(steps: Sequence[Callable], mask: Image.Image) -> Image.Image:
    for step in steps:
        kind = type(step).__name__
        if not _GEOMETRIC.search(kind):
            continue
        if kind.startswith("Random"):
            raise ValueError(f"cannot replay the random transform {kind} on a mask")
        mask = _box_interpolating(step)(mask)
    return mask


def _box_interpolating(step: Any) -> Any:
    """A copy of a resize-like step that resamples with BOX (area average); other steps are returned as is."""
    current = getattr(step, "interpolation", None)
    if current is None:
        return step
    # lazy: ls / --help / plugin discovery import this module without torch
    from torchvision.transforms import InterpolationMode

    step = copy.copy(step)
    step.interpolation = InterpolationMode.BOX if isinstance(current, InterpolationMode) else Image.Resampling.BOX
    return step


def _through_preprocess(preprocess: Callable, mask: Image.Image) -> Image.Image | None:
    """Tier 2 of :func:`geometric_like`; None when the preprocess is unusable that way."""
    grey = Image.fromarray((np.asarray(mask) * 255).round().clip(0, 255).astype(np.uint8), mode="L").convert("RGB")
    try:
        ramp, lo, hi = (
            _channel0(preprocess(im)) for im in (grey, *(Image.new("RGB", mask.size, (v,) * 3) for v in (0, 255)))
        )
    except Exception:  # any failure of a foreign preprocess means: use the plain-resize fallback
        return None
    if ramp is None or lo is None or hi is None:
        return None
    black, white = lo.mean(), hi.mean()
    if not np.isfinite(white - black) or abs(white - black) < 1e-6:
        return None
    return Image.fromarray(np.clip((ramp - black) / (white - black), 0.0, 1.0).astype(np.float32), mode="F")


def _channel0(pixels: Any) -> np.ndarray | None:
    if hasattr(pixels, "detach"):
        pixels = pixels.detach().float().cpu().numpy()
    arr = np.asarray(pixels, dtype=np.float32)
    return arr[0] if arr.ndim == 3 else None


def mask_to_patch_grid(mask: Image.Image, image_size_hw: tuple[int, int] | None, grid: tuple[int, int]) -> np.ndarray:
    """(rows, cols) float32 in [0, 1]: the fraction of each patch's pixels that are foreground
    (docs/design.md section 7.5).

    ``mask`` must already be in the model-input frame (see :func:`geometric_like`); mode "F" holds fractions,
    other modes 0..255. ``image_size_hw`` is that frame's size: a mask of another size is first area-resampled
    to it; None takes the mask's own size. When the patches tile the frame exactly (the ViT case) each value
    is the exact mean over the patch's pixels; otherwise a BOX resample to the grid approximates it.
    """
    fraction = as_fraction_image(mask)
    if image_size_hw is not None and fraction.size != (image_size_hw[1], image_size_hw[0]):
        fraction = fraction.resize((image_size_hw[1], image_size_hw[0]), Image.Resampling.BOX)
    rows, cols = grid
    arr = np.asarray(fraction, dtype=np.float64)
    height, width = arr.shape
    if height % rows == 0 and width % cols == 0:
        out = arr.reshape(rows, height // rows, cols, width // cols).mean(axis=(1, 3))
    else:
        out = np.asarray(fraction.resize((cols, rows), Image.Resampling.BOX), dtype=np.float64)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def mask_patch_fractions(
    preprocess: Callable, mask: Image.Image, grid: tuple[int, int], input_size_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Both steps at once: a mask in the original image frame -> patch-grid foreground fractions."""
    return mask_to_patch_grid(geometric_like(preprocess, mask, input_size_hw), input_size_hw, grid)
