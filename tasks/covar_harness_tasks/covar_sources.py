"""What a COVAR build reads: object cut-outs and background images, found on disk and decoded (``build-covar``).

Objects: RGBA cut-outs (alpha = mask) or image + mask pairs (``x.png`` + ``x.mask.png`` or ``x_mask.png``), labelled
by sub-folder (``<objects>/<class>/<file>``) or by ``<objects>/manifest.json``. Backgrounds: images at the top
level (usable for any class) and/or in ``<backgrounds>/<class>/`` sub-folders, or ``<backgrounds>/manifest.json``.
See ``build_covar`` for the full description of the inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from covar_harness.catalog.registry import UsageError
from covar_harness.common.safe_files import open_regular, read_json, slug
from covar_harness.data.pixels import as_mask, as_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = (".mask", "_mask")


ImageLike = str | Path | Image.Image


class BuildError(UsageError):
    """Bad input for a build (no objects, unreadable file, unknown class folder...): one line, exit 2."""


# ----------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class View:
    """One view of an object: an RGBA cut-out, or an image plus a separate mask."""

    image: ImageLike
    mask: ImageLike | None = None


@dataclass(frozen=True)
class ObjectSource:
    id: str
    label: str
    views: tuple[View, ...]


@dataclass(frozen=True)
class BackgroundSource:
    id: str
    image: ImageLike
    label: str | None = None  # the class it is typical of; None = usable for any class


def open_image(x: ImageLike) -> Image.Image:
    """A decoded image; regular files only (a FIFO would hang the build)."""

    if isinstance(x, Image.Image):
        return x
    try:
        with open_regular(x) as fh, Image.open(fh) as im:
            im.load()
            return im
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read image {x}: {exc}") from exc


def load_view(view: View) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 HxWx3, mask bool HxW). The mask is alpha > 127, or the mask image > 127 (white = object)."""

    im = open_image(view.image)
    if view.mask is not None:
        rgb = np.asarray(as_rgb(im))
        mask = np.asarray(as_mask(open_image(view.mask))) > 127
        if mask.shape != rgb.shape[:2]:
            raise BuildError(f"mask {view.mask} is {mask.shape[::-1]} but its image {view.image} is {rgb.shape[1::-1]}")
    elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        rgb, mask = rgba[..., :3].copy(), rgba[..., 3] > 127
    else:
        raise BuildError(f"object {view.image} has no alpha channel and no mask file (x.mask.png or x_mask.png)")
    if not mask.any():
        raise BuildError(f"object {view.image} has an empty mask")
    return rgb, mask


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _mask_partner(p: Path) -> Path | None:
    for suffix in MASK_SUFFIXES:
        for ext in (".png", p.suffix):
            cand = p.with_name(p.stem + suffix + ext)
            if cand.is_file():
                return cand
    return None


def _is_mask_file(p: Path) -> bool:
    return p.stem.endswith(MASK_SUFFIXES)


def discover_objects(folder: Path) -> list[ObjectSource]:
    """Objects from ``manifest.json`` if present, else one object per image in ``<folder>/<class>/``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BuildError(f"--objects {folder} is not a folder")
    manifest = folder / "manifest.json"
    if manifest.is_file():
        return _objects_from_manifest(folder, manifest)
    out = []
    for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(p for p in cls_dir.rglob("*") if _is_image(p) and not _is_mask_file(p)):
            rel = f.relative_to(folder).with_suffix("")
            oid = slug(str(rel).replace(os.sep, "-"), hashed=False)
            out.append(ObjectSource(oid, cls_dir.name, (View(f, _mask_partner(f)),)))
    if not out:
        raise BuildError(f"no objects in {folder}: expected <objects>/<class>/<cut-out>.png or a manifest.json")
    return out


def _objects_from_manifest(folder: Path, manifest: Path) -> list[ObjectSource]:
    try:
        data = read_json(manifest)
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read {manifest}: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise BuildError(f"{manifest}: expected a non-empty mapping object id -> {{label, views}}")
    out = []
    for oid, entry in sorted(data.items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("label"), str) or not entry.get("views"):
            raise BuildError(f"{manifest}: object {oid!r} needs a 'label' string and a non-empty 'views' list")
        views = []
        for v in entry["views"]:
            image, mask = (v.get("image"), v.get("mask")) if isinstance(v, dict) else (v, None)
            if not isinstance(image, str):
                raise BuildError(f"{manifest}: object {oid!r}: each view is a path or {{'image': ..., 'mask': ...}}")
            path = folder / image
            if not path.is_file():
                raise BuildError(f"{manifest}: object {oid!r}: view {image!r} does not exist")
            mask_path = folder / mask if mask else _mask_partner(path)
            views.append(View(path, mask_path))
        out.append(ObjectSource(slug(oid, hashed=False), entry["label"], tuple(views)))
    return out


def discover_backgrounds(folder: Path, classes: Sequence[str]) -> list[BackgroundSource]:
    """Top-level images are generic; ``<folder>/<class>/`` images are typical of that class."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BuildError(f"--backgrounds {folder} is not a folder")
    labels: dict[str, str | None] = {}
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            labels = read_json(manifest)
        except (OSError, ValueError) as exc:
            raise BuildError(f"cannot read {manifest}: {exc}") from exc
        if not isinstance(labels, dict) or not all(v is None or isinstance(v, str) for v in labels.values()):
            raise BuildError(f"{manifest}: expected a mapping file name -> class name (or null)")
    out = [
        BackgroundSource(slug(f.stem, hashed=False), f, labels.get(f.name))
        for f in sorted(folder.iterdir())
        if _is_image(f)
    ]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in classes:
            raise BuildError(f"background folder {sub.name!r} matches no object class; classes: {', '.join(classes)}")
        out += [
            BackgroundSource(slug(f"{sub.name}-{f.stem}", hashed=False), f, sub.name)
            for f in sorted(sub.rglob("*"))
            if _is_image(f)
        ]
    bad = sorted({b.label for b in out if b.label is not None and b.label not in classes})
    if bad:
        raise BuildError(f"{manifest}: background label(s) {', '.join(bad)} match no object class")
    if not out:
        raise BuildError(f"no background images in {folder}")
    return out
