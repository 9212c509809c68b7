"""The image operations of a COVAR build: small pure functions on numpy images and masks (``build-covar``).

Each returns the image, the mask and (where it has any) its parameters, so that the mask always follows the
image exactly (masks are resampled with nearest/threshold, never blurred) and every parameter ends up in the
sample's ``variation`` record.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

CROP_MARGIN = 0.1


def fit_background(bg: Image.Image, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A random square crop of the background (the largest square, random offset), resized to ``size``."""
    bg = bg.convert("RGB")
    w, h = bg.size
    side = min(w, h)
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = bg.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(out).copy(), {"bg_crop": [x0, y0, side]}


def fit_object(rgb: np.ndarray, mask: np.ndarray, longer_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop the object to its mask's bbox and resize so the bbox's longer side is ``longer_side`` pixels.

    Colour is resized premultiplied by the mask (PIL ``RGBa``) so no outside-the-mask colour bleeds into the
    edges; the mask is the resized alpha thresholded at 50 %, so it stays binary.
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rgba = np.dstack([rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1].astype(np.uint8) * 255])
    h, w = rgba.shape[:2]
    k = max(1, int(longer_side)) / max(h, w)
    new = (max(1, round(w * k)), max(1, round(h * k)))
    im = Image.fromarray(rgba, "RGBA").convert("RGBa").resize(new, Image.Resampling.LANCZOS).convert("RGBA")
    arr = np.asarray(im)
    return arr[..., :3].copy(), arr[..., 3] >= 128


def composite(
    bg: np.ndarray, obj_rgb: np.ndarray, obj_mask: np.ndarray, center: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the object (hard mask) with its bbox centre at ``center`` (x, y); clipped at the borders."""
    out, mask = bg.copy(), np.zeros(bg.shape[:2], bool)
    h, w = obj_mask.shape
    top, left = math.floor(center[1] - h / 2 + 0.5), math.floor(center[0] - w / 2 + 0.5)  # not banker's rounding
    sy0, sx0 = max(0, -top), max(0, -left)
    dy0, dx0 = max(0, top), max(0, left)
    dy1, dx1 = min(bg.shape[0], top + h), min(bg.shape[1], left + w)
    if dy1 <= dy0 or dx1 <= dx0:
        return out, mask
    m = obj_mask[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
    region = out[dy0:dy1, dx0:dx1]
    region[m] = obj_rgb[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0][m]
    mask[dy0:dy1, dx0:dx1] = m
    return out, mask


def hflip(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    return image[:, ::-1].copy(), mask[:, ::-1].copy(), {"flip": "horizontal"}


def vflip(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    return image[::-1].copy(), mask[::-1].copy(), {"flip": "vertical"}


def rotate(image: np.ndarray, mask: np.ndarray, angle: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Counter-clockwise rotation by a multiple of 90 degrees: exact, so the mask follows pixel for pixel."""
    if angle % 90:
        raise ValueError(f"rotation angle must be a multiple of 90, got {angle}")
    k = (angle // 90) % 4
    return np.rot90(image, k).copy(), np.rot90(mask, k).copy(), {"angle": int(angle)}


def crop_tight(image: np.ndarray, mask: np.ndarray, margin: float = CROP_MARGIN) -> tuple[np.ndarray, np.ndarray, dict]:
    """A square crop around the mask's bbox (plus ``margin`` of its side), resized back to the image size.

    Image bicubic, mask nearest, from the same box: the mask stays binary and aligned.
    """
    size = image.shape[0]
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) * (1 + 2 * margin)
    side = int(min(max(side, 4), size))
    x0 = int(np.clip(round(cx - side / 2), 0, size - side))
    y0 = int(np.clip(round(cy - side / 2), 0, size - side))
    box = (x0, y0, x0 + side, y0 + side)
    img = Image.fromarray(image).crop(box).resize((size, size), Image.Resampling.BICUBIC)
    msk = Image.fromarray(mask.astype(np.uint8) * 255).crop(box).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(img).copy(), np.asarray(msk) > 127, {"box": list(box), "margin": margin}


def translate_shift(size: int, obj_shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """A whole-pixel off-centre shift (dx, dy) towards a random corner that keeps the object inside the image.

    Whole pixels, so the translated mask is exactly the canonical mask moved by the recorded shift.
    """
    h, w = obj_shape
    free_x, free_y = max(0.0, (size - w) / 2), max(0.0, (size - h) / 2)
    sx, sy = rng.choice([-1, 1]), rng.choice([-1, 1])
    fx, fy = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)
    return int(sx * math.floor(fx * free_x)), int(sy * math.floor(fy * free_y))
