"""PNG overlays of CCI importance maps (``--save-maps``, ``covar-harness explain``).

The overlay is drawn on the model's own input (the preprocessed pixels, de-normalised), not on the original
file: resizing and centre-cropping would otherwise misalign the patch grid. A foreground mask goes through
the same geometry as for diagnosis (``mask_geometry.geometric_like``), so its outline lands where the model saw
the object and where the diagnosis counted it. Only numpy and PIL are used.

Layout: two panels side by side, upscaled to at least ``MIN_SIDE`` pixels, then a legend and a caption:
left, the input with cluster boundaries (white); right, the importance heat map with the mask outline (cyan).
The heat map uses cividis (dark blue -> grey -> yellow, from a small table: monotone in lightness, readable
by colour-blind readers and never red, so it stays readable on red objects): yellow = removing the cluster
lowers the similarity (it supports the class), blue = raises it; opacity ~ sqrt(|importance| / max).
The legend shows that scale with its range and the two outlines; the caption (:class:`Caption`) the label,
prediction, top-5, correct or wrong, and the fg fraction and driver when a mask is known. Drawn with PIL's
default font: deterministic for a given Pillow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from covar_harness.common.console import clip, safe
from covar_harness.common.safe_files import atomic_write
from covar_harness.masks.geometry import geometric_like

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from covar_harness.data.samples import SampleSet

MIN_SIDE = 224
# cividis (Nunez, Anderton & Renslow 2018) sampled at 17 evenly spaced points, interpolated linearly
CIVIDIS = np.array(
    [
        (0, 34, 78), (0, 46, 106), (26, 56, 111), (50, 67, 109), (67, 78, 108), (83, 90, 109), (97, 101, 111),
        (111, 112, 115), (125, 124, 120), (140, 136, 120), (155, 148, 118), (171, 160, 114), (188, 174, 108),
        (205, 187, 99), (222, 201, 88), (240, 216, 70), (254, 232, 56),
    ],
    dtype=np.float32,
)  # fmt: skip
OUTLINE = np.array([0, 230, 255], dtype=np.uint8)  # mask outline: bright cyan, apart from the map and from red
BOUNDARY = np.array([255, 255, 255], dtype=np.uint8)


def hex_colour(rgb: Any) -> str:
    return "#" + "".join(f"{int(round(float(c))):02x}" for c in rgb)


# The one colour language of every view of an importance (overlays, their legend, the report's bars, patch grids
# and legend swatches, report.css): the ends of the heat map's scale, and the two outlines.
SUPPORT_HEX = hex_colour(CIVIDIS[-1])  # yellow: removing the cluster lowers the score (it supports the class)
OPPOSE_HEX = hex_colour(CIVIDIS[0])  # dark blue: removing it raises the score
OUTLINE_HEX = hex_colour(OUTLINE)  # cyan: the object mask's outline
BOUNDARY_HEX = hex_colour(BOUNDARY)  # white: cluster boundaries
MAX_ALPHA = 0.8
TEXT, MUTED, GOOD, BAD = (0, 0, 0), (90, 90, 90), (0, 120, 40), (200, 0, 0)


def _probe(preprocess: Callable, value: int, size: tuple[int, int]) -> np.ndarray:
    """The preprocessed value of a uniform grey image: locates the per-channel affine normalisation."""

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
    diagnosis uses (``mask_geometry.geometric_like``), thresholded at half a pixel of foreground."""

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


def colormap(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> (..., 3) float RGB on the cividis table."""
    x = np.clip(np.asarray(t, dtype=np.float32), 0, 1) * (len(CIVIDIS) - 1)
    lo = np.minimum(np.floor(x).astype(int), len(CIVIDIS) - 2)
    f = (x - lo)[..., None]
    return CIVIDIS[lo] * (1 - f) + CIVIDIS[lo + 1] * f


def heat_overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend a signed heat map over the image: colour = cividis at (value / max |value| + 1) / 2, opacity
    ``MAX_ALPHA * sqrt(|value| / max |value|)`` (a zero value leaves the pixel as it was)."""
    peak = float(np.abs(heat).max())
    rel = heat / peak if peak > 0 else np.zeros_like(heat)
    alpha = (np.sqrt(np.abs(rel)) * MAX_ALPHA)[..., None]  # sqrt: mid values show, not just the peak
    out = rgb.astype(np.float32) * (1 - alpha) + colormap((rel + 1) / 2) * alpha
    return out.round().astype(np.uint8)


@dataclass(frozen=True)
class Caption:
    """What the caption under an overlay says. Strings may be untrusted (class and file names): they are made
    plain (``console.safe``) and cut (``console.clip``) when the lines are built.

    ``rules``: {rule: (fg score, driver)} in ``--driver-rule`` order, the first being the headline; empty when no
    mask is known. ``correct`` None: no ground truth (``explain``)."""

    pred: str
    top5: Sequence[str] = ()
    label: str | None = None
    correct: bool | None = None
    rules: Mapping[str, tuple[float | None, str | None]] = field(default_factory=dict)
    notes: Sequence[str] = ()  # extra lines (e.g. the explained class, the file name)


NAME_CELLS = 40  # a class or file name is cut to this many terminal cells in a caption


def verdict(correct: bool | None) -> str | None:
    """``correct`` / ``wrong`` (file names and captions); None without ground truth."""
    return None if correct is None else ("correct" if correct else "wrong")


def map_name(index: int, stem: str, correct: bool | None) -> str:
    """``<index:06d>_<correct|wrong>_<stem>.png`` (the report finds maps by their ``<index:06d>_`` prefix)."""
    word = verdict(correct)
    return f"{index:06d}_{stem}.png" if word is None else f"{index:06d}_{word}_{stem}.png"


def _name(text: Any) -> str:
    return clip(safe(text), NAME_CELLS)


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def caption_lines(caption: Caption) -> list[str]:
    """The caption as plain one-line strings: verdict and label/prediction, top-5, fg fraction and driver per
    rule (or why there is none), then ``notes``."""
    head = verdict(caption.correct)
    label = "n/a (no ground truth)" if caption.label is None else _name(caption.label)
    lines = [f"{head.upper() + '   ' if head else ''}label: {label}   prediction: {_name(caption.pred)}"]
    lines.append("top-5: " + (", ".join(_name(c) for c in caption.top5[:5]) or "n/a"))
    if not caption.rules:
        lines.append("fg fraction n/a, driver n/a (no mask)")
    for i, (rule, (score, driver)) in enumerate(caption.rules.items()):
        tail = "   (headline)" if i == 0 and len(caption.rules) > 1 else ""
        lines.append(f"{_name(rule)} rule: fg fraction {_score(score)}, driver {_name(driver or 'n/a')}{tail}")
    lines += [safe_clip(n, 3 * NAME_CELLS) for n in caption.notes]
    return lines


def safe_clip(text: Any, cells: int) -> str:
    return clip(safe(text), cells)


@cache
def _font() -> Any:
    try:
        return ImageFont.load_default(size=12)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _drawable(text: str, font: Any, width: int) -> str:
    """``text`` cut until it fits ``width`` pixels; characters the bitmap fallback font lacks become ``?``."""

    if not isinstance(font, ImageFont.FreeTypeFont):
        text = text.encode("latin-1", "replace").decode("latin-1")
    while text and font.getlength(text) > width:
        text = safe_clip(text, max(len(text) - 2, 1))
    return text


def _line_height(font: Any) -> int:
    box = font.getbbox("Ag|")
    return int(box[3] - box[1]) + 5


LEGEND_TITLE = "CCI importance, opacity ~ |value|: yellow supports the class, blue opposes it"


def _draw_legend(draw: Any, y: int, width: int, peak: float, has_mask: bool) -> int:
    """The importance scale (with its range) and the two outline swatches from row ``y``; returns the next row."""
    font = _font()
    lh = _line_height(font)
    bar_w = min(256, width // 2 - 16)
    draw.text((8, y), _drawable(LEGEND_TITLE, font, width - 16), fill=TEXT, font=font)
    y += lh
    ramp = colormap(np.linspace(0, 1, bar_w)).round().astype(np.uint8)
    for x, colour in enumerate(ramp):
        draw.line([(8 + x, y), (8 + x, y + 10)], fill=tuple(int(c) for c in colour))
    draw.rectangle([7, y - 1, 8 + bar_w, y + 11], outline=MUTED)
    for frac, text in ((0.0, f"-{peak:.3g}"), (0.5, "0"), (1.0, f"+{peak:.3g}")):
        x = 8 + frac * (bar_w - font.getlength(text))
        draw.text((x, y + 13), text, fill=TEXT, font=font)
    x0 = bar_w + 32
    swatches = ((BOUNDARY, "cluster outline"), (OUTLINE, "mask outline" + ("" if has_mask else " (no mask)")))
    for row, (colour, text) in enumerate(swatches):
        top, rgb = y + row * (lh + 2), tuple(int(c) for c in colour)
        draw.rectangle([x0, top, x0 + 22, top + lh - 3], fill=(60, 60, 60))  # a dark patch of image ...
        draw.rectangle([x0 + 4, top + 3, x0 + 18, top + lh - 6], outline=rgb, width=2)  # ... with the outline
        draw.text((x0 + 30, top), _drawable(text, font, width - x0 - 34), fill=TEXT, font=font)
    return y + 2 * lh + 8


def _draw_caption(draw: Any, y: int, width: int, caption: Caption) -> int:
    font = _font()
    lh = _line_height(font)
    for i, line in enumerate(caption_lines(caption)):
        colour = (GOOD if caption.correct else BAD) if i == 0 and caption.correct is not None else TEXT
        draw.text((8, y), _drawable(line, font, width - 16), fill=colour, font=font)
        y += lh
    return y + 4


def _with_legend(panels: np.ndarray, peak: float, has_mask: bool, caption: Caption | None) -> Image.Image:
    """The panels with the legend and (when given) the caption on a white strip below."""

    height, width = panels.shape[:2]
    lh = _line_height(_font())
    n_lines = 0 if caption is None else len(caption_lines(caption))
    strip = 6 + 3 * lh + 8 + n_lines * lh + 8
    canvas = Image.new("RGB", (width, height + strip), (255, 255, 255))
    canvas.paste(Image.fromarray(panels), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = _draw_legend(draw, height + 6, width, peak, has_mask)
    if caption is not None:
        draw.line([(8, y - 4), (width - 8, y - 4)], fill=(200, 200, 200))
        _draw_caption(draw, y, width, caption)
    return canvas


def render_overlay(
    rgb: np.ndarray,
    patch_importance: np.ndarray,
    assignments: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    caption: Caption | None = None,
) -> Image.Image:
    """The overlay as a PIL image: two panels, legend, caption (see the module docstring)."""

    h, w = rgb.shape[:2]
    scale = max(1, -(-MIN_SIDE // min(h, w)))
    big = np.asarray(Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.NEAREST)).copy()
    H, W = big.shape[:2]
    left = big.copy()
    if assignments is not None:
        left[_edges(_upsample(np.asarray(assignments), H, W))] = BOUNDARY
    importance = np.asarray(patch_importance, dtype=np.float32)
    right = heat_overlay(big, _upsample(importance, H, W))
    if mask is not None:
        m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.Resampling.NEAREST)) > 127
        edge = _edges(m.astype(np.int8))
        edge[1:] |= edge[:-1]  # two pixels wide: visible on a busy heat map
        edge[:, 1:] |= edge[:, :-1]
        right[edge] = OUTLINE
    gap = np.full((H, 4, 3), 255, dtype=np.uint8)
    panels = np.concatenate([left, gap, right], axis=1)
    return _with_legend(panels, float(np.abs(importance).max()) if importance.size else 0.0, mask is not None, caption)


def save_overlay(
    path: Path,
    pixels: torch.Tensor,
    patch_importance: Any,
    assignments: Any = None,
    mask: np.ndarray | None = None,
    preprocess: Callable | None = None,
    caption: Caption | None = None,
) -> Path:
    """Write the overlay PNG for one image; ``patch_importance`` and ``assignments`` are (rows, cols)."""
    rgb = pixels_to_rgb(pixels, preprocess)

    def to_np(t: Any) -> Any:
        return None if t is None else (t.numpy() if hasattr(t, "numpy") else np.asarray(t))

    image = render_overlay(rgb, to_np(patch_importance), to_np(assignments), mask, caption)

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")  # as image.save(path) would choose
    atomic_write(path, lambda fh: image.save(fh, format=fmt), binary=True)  # never a half-written file
    return path
