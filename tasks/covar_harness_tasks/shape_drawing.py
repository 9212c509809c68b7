"""The drawing behind COVAR-Shapes: ten flat shape classes and ten procedural background families.

Objects are flat shapes with random colours, textures and an outline, and exact masks; backgrounds are
procedural textures (grass, water, brick, sky, snow, wood, sand, checker, dots, stripes). Everything is drawn
from the numpy RNGs the caller passes, so the same seeds give the same pixels. ``covar_shapes`` writes the
benchmark's sources with these functions; ``scripts/train_demo_models.py`` draws training data with them.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "star", "cross", "heart", "crescent", "hexagon", "arrow", "ring")
FAMILIES = ("grass", "water", "brick", "sky", "snow", "wood", "sand", "checker", "dots", "stripes")
SOURCE_SIZE = 128

Polygon = list[tuple[float, float]]


# --------------------------------------------------------------------------------------------- shapes
def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> Polygon:
    return [(r * math.cos(phase + 2 * math.pi * i / n), r * math.sin(phase + 2 * math.pi * i / n)) for i in range(n)]


def _star(points: int = 5, inner: float = 0.45) -> Polygon:
    out = []
    for i in range(2 * points):
        r = 1.0 if i % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * i / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _heart() -> Polygon:
    pts = []
    for i in range(64):
        t = 2 * math.pi * i / 64
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((x / 17, (y + 2.5) / 17))
    return pts


def _shape_ops(cls: str, rng: np.random.Generator) -> list[tuple[Polygon, int]]:
    """The class's outline in unit coordinates as (polygon, fill) operations; fill 0 cuts a hole."""
    if cls == "circle":
        return [(_regular(64), 1)]
    if cls == "square":
        return [([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)], 1)]
    if cls == "triangle":
        return [([(x, y + 0.2) for x, y in _regular(3, 1.1)], 1)]
    if cls == "star":
        return [(_star(5, float(rng.uniform(0.38, 0.5))), 1)]
    if cls == "cross":
        a = float(rng.uniform(0.28, 0.36))
        return [
            (
                [
                    (-a, -1),
                    (a, -1),
                    (a, -a),
                    (1, -a),
                    (1, a),
                    (a, a),
                    (a, 1),
                    (-a, 1),
                    (-a, a),
                    (-1, a),
                    (-1, -a),
                    (-a, -a),
                ],
                1,
            )
        ]
    if cls == "heart":
        return [(_heart(), 1)]
    if cls == "crescent":
        off = float(rng.uniform(0.45, 0.6))
        return [(_regular(64), 1), ([(x * 0.85 + off, y * 0.85 - 0.1) for x, y in _regular(64)], 0)]
    if cls == "hexagon":
        return [(_regular(6, 1.0, 0.0), 1)]
    if cls == "arrow":
        s = float(rng.uniform(0.25, 0.35))
        return [([(-1, -s), (0.1, -s), (0.1, -0.75), (1, 0), (0.1, 0.75), (0.1, s), (-1, s)], 1)]
    if cls == "ring":
        inner = float(rng.uniform(0.5, 0.62))
        return [(_regular(64), 1), (_regular(64, inner), 0)]
    raise ValueError(f"unknown shape class {cls!r}")


def shape_mask(
    cls: str,
    rng: np.random.Generator,
    size: int,
    *,
    extent: float = 0.8,
    rotation: float = 0.0,
    view: tuple[float, float] = (1.0, 1.0),
    supersample: int = 4,
) -> np.ndarray:
    """Binary mask (size x size) of one shape instance, drawn at ``supersample`` x and box-downsampled."""
    ops = _shape_ops(cls, rng)
    aspect = float(rng.uniform(0.88, 1.12))
    big = size * supersample
    half = big * extent / 2
    c, s = math.cos(rotation), math.sin(rotation)
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, fill in ops:
        pts = []
        for x, y in poly:
            x, y = x * aspect * view[0], y / aspect * view[1]
            pts.append((big / 2 + half * (c * x - s * y), big / 2 + half * (s * x + c * y)))
        draw.polygon(pts, fill=255 * fill)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX)) >= 128


def _hsv_colour(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255


def object_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size float RGB fill: solid, stripes, dots or gradient, in random colours."""
    c1 = _hsv_colour(rng)
    c2 = np.clip(c1 * rng.uniform(0.65, 0.85), 0, 255)  # a darker shade: textured, yet one object
    yy, xx = np.mgrid[0:size, 0:size] / size
    kind = rng.choice(["solid", "solid", "stripes", "dots", "gradient"])
    if kind == "solid":
        t = np.zeros((size, size))
    elif kind == "stripes":
        a = rng.uniform(0, math.pi)
        t = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi * rng.uniform(3, 6)) > 0).astype(float)
    elif kind == "dots":
        f = rng.uniform(4, 7)
        t = ((np.sin(xx * 2 * math.pi * f) * np.sin(yy * 2 * math.pi * f)) > 0.45).astype(float)
    else:
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0, 1)
    return c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]


def render_object(
    cls: str,
    rng: np.random.Generator,
    size: int = SOURCE_SIZE,
    *,
    rotation: float = 0.0,
    view: tuple[float, float] = (1.0, 1.0),
    extent: float = 0.8,
    style_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """RGBA uint8 cut-out of one object: textured fill, dark outline, alpha = exact mask.

    ``rng`` decides the geometry, ``style_rng`` (default: ``rng``) the colours, so several views of one object
    can share its look.
    """
    mask = shape_mask(cls, rng, size, extent=extent, rotation=rotation, view=view)
    style = style_rng if style_rng is not None else rng
    fill = object_texture(style, size)
    shade = 0.8 + 0.2 * view[0] * view[1]  # side views are a little darker, as if turned from the light
    width = max(3, size // 14) | 1  # a thick dark outline: the object's edge stays visible on any background
    inner = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(width))) > 127
    rgb = fill * shade
    rgb[mask & ~inner] *= 0.3
    return np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255])


# ---------------------------------------------------------------------------------------- backgrounds
def _noise(rng: np.random.Generator, size: int, cells: int, stretch: tuple[float, float] = (1, 1)) -> np.ndarray:
    """Smooth value noise in [0, 1]: a random grid upsampled bicubically."""
    gx, gy = max(2, int(cells * stretch[0])), max(2, int(cells * stretch[1]))
    grid = (rng.random((gy, gx)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255


def _mix(a, b, t: np.ndarray) -> np.ndarray:
    t = t[..., None]
    return np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t


def _jitter(rng: np.random.Generator, colour, amount: float = 18) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0, amount, 3), 0, 255)


def bg_grass(rng, size):
    blades = _noise(rng, size, size // 3, (4, 0.35))
    n = 0.6 * blades + 0.4 * _noise(rng, size, 6)
    return _mix(_jitter(rng, (30, 90, 25)), _jitter(rng, (120, 190, 60)), n)


def bg_water(rng, size):
    yy, xx = np.mgrid[0:size, 0:size] / size
    w = sum(
        np.sin(2 * math.pi * (rng.uniform(2, 6) * yy + rng.uniform(-1, 1) * xx) + rng.uniform(0, 6)) for _ in range(3)
    )
    t = np.clip(0.5 + w / 6 + 0.15 * (_noise(rng, size, 5) - 0.5), 0, 1)
    return _mix(_jitter(rng, (15, 60, 140)), _jitter(rng, (90, 170, 220)), t)


def bg_brick(rng, size):
    bh = int(rng.integers(size // 10, size // 6))
    bw = bh * 2
    img = np.zeros((size, size, 3), np.float32)
    mortar = _jitter(rng, (200, 195, 185), 10)
    base = _jitter(rng, (150, 60, 40), 20)
    for r in range(size // bh + 1):
        off = (bw // 2) * (r % 2) + int(rng.integers(0, bw))
        for c in range(-1, size // bw + 2):
            x0, y0 = c * bw - off % bw, r * bh
            img[max(0, y0) : max(0, y0 + bh), max(0, x0) : max(0, x0 + bw)] = np.clip(
                base + rng.normal(0, 15, 3), 0, 255
            )
    yy, xx = np.mgrid[0:size, 0:size]
    lines = yy % bh < max(1, bh // 6)
    col = np.zeros((size, size), bool)
    for r in range(size // bh + 1):
        off = (bw // 2) * (r % 2)
        rows = slice(r * bh, (r + 1) * bh)
        col[rows] = ((xx[rows] + off) % bw) < max(1, bh // 6)
    img[lines | col] = mortar
    return img


def bg_sky(rng, size):
    yy = np.mgrid[0:size, 0:size][0] / size
    sky = _mix(_jitter(rng, (70, 130, 210)), _jitter(rng, (170, 210, 245)), yy)
    clouds = np.clip((_noise(rng, size, 4, (1.6, 1)) - rng.uniform(0.5, 0.65)) * 4, 0, 1)
    return _mix(sky, (250, 250, 252), clouds)


def bg_snow(rng, size):
    t = _noise(rng, size, 5)
    img = _mix(_jitter(rng, (190, 200, 215), 8), (250, 250, 255), t)
    flakes = rng.random((size, size)) < 0.04
    img[flakes] = 255
    return img


def bg_wood(rng, size):
    yy, xx = np.mgrid[0:size, 0:size] / size
    warp = _noise(rng, size, 3) * rng.uniform(1.5, 3)
    grain = np.sin(2 * math.pi * (xx * rng.uniform(6, 12) + warp)) * 0.5 + 0.5
    dark, light = _jitter(rng, (110, 65, 30)), _jitter(rng, (185, 130, 75))  # RNG order is part of the data
    return _mix(dark, light, 0.7 * grain + 0.3 * _noise(rng, size, size // 4))


def bg_sand(rng, size):
    yy, xx = np.mgrid[0:size, 0:size] / size
    ripple = np.sin(2 * math.pi * (yy * rng.uniform(5, 9) + 0.3 * _noise(rng, size, 3))) * 0.5 + 0.5
    grain = rng.random((size, size))
    dark, light = _jitter(rng, (190, 160, 110)), _jitter(rng, (235, 210, 160))
    return _mix(dark, light, 0.5 * ripple + 0.3 * grain + 0.2 * _noise(rng, size, 4))


def bg_checker(rng, size):
    cell = int(rng.integers(size // 8, size // 4))
    yy, xx = np.mgrid[0:size, 0:size]
    t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    return _mix(_hsv_colour(rng) * 0.6 + 60, _hsv_colour(rng) * 0.4 + 30, t)


def bg_dots(rng, size):
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.broadcast_to(_hsv_colour(rng) * 0.5 + 110, (size, size, 3)).astype(np.float32).copy()
    dot = _hsv_colour(rng) * 0.7
    step = int(rng.integers(size // 7, size // 4))
    r = step * rng.uniform(0.2, 0.32)
    ox, oy = rng.integers(0, step, 2)
    d = np.hypot((xx + ox) % step - step / 2, (yy + oy) % step - step / 2)
    img[d < r] = dot
    return img


def bg_stripes(rng, size):
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = rng.choice([math.pi / 4, 3 * math.pi / 4]) + rng.uniform(-0.2, 0.2)
    t = (np.sin(2 * math.pi * rng.uniform(4, 8) * (xx * math.cos(a) + yy * math.sin(a))) > 0).astype(np.float32)
    return _mix(_hsv_colour(rng) * 0.5 + 100, _hsv_colour(rng) * 0.5 + 20, t)


BACKGROUNDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "grass": bg_grass,
    "water": bg_water,
    "brick": bg_brick,
    "sky": bg_sky,
    "snow": bg_snow,
    "wood": bg_wood,
    "sand": bg_sand,
    "checker": bg_checker,
    "dots": bg_dots,
    "stripes": bg_stripes,
}


def render_background(family: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """An RGB uint8 size x size background of one family with random parameters.

    Contrast is halved towards the image mean: families stay easy to tell apart (the shortcut is learnable)
    while a busy pattern does not hide the object's outline.
    """
    img = BACKGROUNDS[family](rng, size).astype(np.float32)
    img = img.mean(axis=(0, 1), keepdims=True) * 0.5 + img * 0.5
    return np.clip(img, 0, 255).astype(np.uint8)
