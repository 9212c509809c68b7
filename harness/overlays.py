"""PNG overlays of CCI importance maps (``--save-maps``, ``covar-harness explain``).

The overlay is drawn on the model's own input (the preprocessed pixels, de-normalised), not on the original
file: resizing and centre-cropping would otherwise misalign the patch grid. A foreground mask goes through
the same geometry as for diagnosis (``segmentation.geometric_like``), so its outline lands where the model saw
the object and where the diagnosis counted it. Only numpy and PIL are used.

Layout: two panels side by side, upscaled to at least ``MIN_SIDE`` pixels:
left, the input with cluster boundaries; right, the importance heat map (red = removing the cluster lowers
the similarity, blue = raises it; opacity ~ |importance| / max |importance|) with the mask outline in yellow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from covar_harness.data import SampleSet

MIN_SIDE = 224
POSITIVE = np.array([230, 30, 30], dtype=np.float32)
NEGATIVE = np.array([30, 90, 230], dtype=np.float32)
OUTLINE = np.array([255, 230, 0], dtype=np.uint8)
BOUNDARY = np.array([255, 255, 255], dtype=np.uint8)


def _probe(preprocess: Callable, value: int, size: tuple[int, int]) -> np.ndarray:
    """The preprocessed value of a uniform grey image: locates the per-channel affine normalisation."""
    from PIL import Image

    return np.asarray(preprocess(Image.new("RGB", size, (value,) * 3)), dtype=np.float32).mean(axis=(1, 2))


def pixels_to_rgb(pixels: torch.Tensor, preprocess: Callable | None = None) -> np.ndarray:
    """(3, H, W) model input -> (H, W, 3) uint8. With the adapter's ``preprocess``, the normalisation is undone
    exactly (probed with a black and a white image); without it, each channel is min-max stretched."""
    x = pixels.detach().float().cpu().numpy()
    if preprocess is not None:
        size = (x.shape[2], x.shape[1])
        black, white = _probe(preprocess, 0, size), _probe(preprocess, 255, size)
        scale = np.where(np.abs(white - black) > 1e-12, white - black, 1.0)
        x = (x - black[:, None, None]) / scale[:, None, None]
    else:
        lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-12)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def mask_to_input_frame(
    mask: Image.Image, preprocess: Callable, input_size_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """A mask (mode L, white = object) in the original frame -> (H, W) bool in the model-input frame: the mapping
    diagnosis uses (``segmentation.geometric_like``), thresholded at half a pixel of foreground."""
    from covar_harness.segmentation import geometric_like

    return np.asarray(geometric_like(preprocess, mask, input_size_hw), dtype=np.float32) > 0.5


def mask_in_input_frame(
    samples: SampleSet, index: int, preprocess: Callable, input_size_hw: tuple[int, int] | None = None
) -> np.ndarray | None:
    """The sample's dataset mask mapped into the model-input frame, or None when it has none (or it fails: the
    outline is decoration, so an unreadable or oversized mask must not fail the pair)."""
    try:
        mask = samples.open_mask(index)
        return None if mask is None else mask_to_input_frame(mask, preprocess, input_size_hw)
    except Exception:  # noqa: BLE001 - corrupt, missing, decompression bomb, a preprocess that rejects masks
        return None


def _upsample(grid_values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour patch grid -> pixels: each patch shows exactly its cluster's value."""
    rows, cols = grid_values.shape
    r_idx = np.minimum(np.arange(height) * rows // height, rows - 1)
    c_idx = np.minimum(np.arange(width) * cols // width, cols - 1)
    return grid_values[r_idx][:, c_idx]


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels where the label changes to the right or below (cluster boundaries / mask outline)."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def heat_overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend a signed heat map over the image; opacity grows with |value| relative to the largest |value|."""
    peak = float(np.abs(heat).max())
    alpha = (np.abs(heat) / peak * 0.65) if peak > 0 else np.zeros_like(heat)
    colour = np.where(heat[..., None] >= 0, POSITIVE, NEGATIVE)
    out = rgb.astype(np.float32) * (1 - alpha[..., None]) + colour * alpha[..., None]
    return out.round().astype(np.uint8)


def render_overlay(
    rgb: np.ndarray, patch_importance: np.ndarray, assignments: np.ndarray | None = None, mask: np.ndarray | None = None
) -> Image.Image:
    """The two-panel overlay as a PIL image (see the module docstring)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = max(1, -(-MIN_SIDE // min(h, w)))
    big = np.asarray(Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.NEAREST)).copy()
    H, W = big.shape[:2]
    left = big.copy()
    if assignments is not None:
        left[_edges(_upsample(np.asarray(assignments), H, W))] = BOUNDARY
    right = heat_overlay(big, _upsample(np.asarray(patch_importance, dtype=np.float32), H, W))
    if mask is not None:
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.Resampling.NEAREST)) > 127
        right[_edges(m.astype(np.int8))] = OUTLINE
    gap = np.full((H, 4, 3), 255, dtype=np.uint8)
    return Image.fromarray(np.concatenate([left, gap, right], axis=1))


def save_overlay(
    path: Path,
    pixels: torch.Tensor,
    patch_importance: Any,
    assignments: Any = None,
    mask: np.ndarray | None = None,
    preprocess: Callable | None = None,
) -> Path:
    """Write the overlay PNG for one image; ``patch_importance`` and ``assignments`` are (rows, cols)."""
    rgb = pixels_to_rgb(pixels, preprocess)

    def to_np(t: Any) -> Any:
        return None if t is None else (t.numpy() if hasattr(t, "numpy") else np.asarray(t))

    image = render_overlay(rgb, to_np(patch_importance), to_np(assignments), mask)
    from PIL import Image

    from covar_harness.results import atomic_write

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")  # as image.save(path) would choose
    atomic_write(path, lambda fh: image.save(fh, format=fmt), binary=True)  # never a half-written file
    return path
