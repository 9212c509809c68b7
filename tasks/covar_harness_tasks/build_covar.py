"""``covar-harness build-covar``: COVAR-style variations from segmented objects (docs/design.md section 5).

COVAR itself is not released, so researchers need a way to make the same kind of benchmark from any cut-out
objects. Every transform (in ``image_ops``) is a small pure function that returns the image, the mask and its
parameters, so that (a) the mask always follows the image exactly (masks are resampled with nearest/threshold,
never blurred) and (b) every parameter ends up in the sample's ``variation`` record. The inputs are found and
decoded by ``covar_sources``; this module plans, builds and writes the variations, and is the CLI.

Inputs
  objects: RGBA cut-outs (alpha = mask) or image + mask pairs (``x.png`` + ``x.mask.png`` or ``x_mask.png``),
  labelled by sub-folder (``<objects>/<class>/<file>``) or by ``<objects>/manifest.json``:
  ``{"<object id>": {"label": "cat", "views": ["cat1.png", {"image": "cat1b.jpg", "mask": "cat1b_m.png"}]}}``.
  Several views of one object (manifest only) enable the ``viewpoint`` subset.
  backgrounds: images at the top level (usable for any class) and/or in ``<backgrounds>/<class>/`` sub-folders
  (the "typical" backgrounds of that class), or ``<backgrounds>/manifest.json`` ``{"file": "class" | null}``.

Determinism: each object instance draws from its own RNG seeded by (seed, object id, instance), so a parallel
build writes byte-identical files and metadata to a serial one. Interrupted builds are detectable: each
subset's ``metadata.jsonl`` is written (temp + rename) only after all its images, and ``build.json`` last.

Paths in metadata are relative to the subset folder (version 2 on), so each subset folder also loads as a Hugging
Face ``imagefolder``. A build is marked from its start (``.covar-build``), so ``--overwrite`` replaces only a
previous build and never a folder of someone's own files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from covar_harness.common.safe_files import atomic_write, read_text_capped, slug
from covar_harness.data.subsets import ALL_SUBSETS
from covar_harness_tasks.covar import subset_relative
from covar_harness_tasks.covar_sources import (
    BackgroundSource,
    BuildError,
    ObjectSource,
    discover_backgrounds,
    discover_objects,
    load_view,
    open_image,
)
from covar_harness_tasks.image_ops import (
    composite,
    crop_tight,
    fit_background,
    fit_object,
    hflip,
    rotate,
    translate_shift,
    vflip,
)

BUILD_VERSION = 2  # 2: metadata paths relative to the subset folder (1: relative to the build root)
BUILD_MARKER = ".covar-build"  # written before anything else: the folder holds a (maybe unfinished) build
OBJECT_FRAC = 0.6  # canonical object size: the bbox's longer side as a fraction of the image side
SCALE_FACTORS = (0.5, 1.5)  # the `scale` subset: object smaller and larger than canonical
ROTATIONS = (90, 180, 270)  # exact rotations: no resampling, no empty corners, masks follow pixel for pixel


@dataclass(frozen=True)
class BuildOptions:
    seed: int = 0
    size: int = 224
    per_object: int = 1
    workers: int | None = None
    object_frac: float = OBJECT_FRAC


@dataclass
class BuildReport:
    out: Path
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should know, e.g. no viewpoint subset


# ----------------------------------------------------------------------------------------------- builder
def item_rng(seed: int, *keys: Any) -> np.random.Generator:
    """An RNG for one item, from the build seed and the item's identity (never from processing order)."""
    digest = hashlib.sha256(json.dumps([seed, *keys]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class ItemJob:
    obj: ObjectSource
    instance: int
    label: int
    typical: tuple[BackgroundSource, ...]
    others: tuple[BackgroundSource, ...]
    out: Path
    options: BuildOptions


def _pick(rng: np.random.Generator, pool: Sequence[BackgroundSource]) -> BackgroundSource:
    return pool[int(rng.integers(len(pool)))]


def _save(out: Path, rel: str, image: np.ndarray, mask: np.ndarray) -> tuple[str, str]:
    mask_rel = rel[: -len(".png")] + ".mask.png"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out / rel)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out / mask_rel)
    return rel, mask_rel


def build_item(job: ItemJob) -> list[tuple[str, dict]]:
    """All variants of one object instance: writes images + masks, returns (subset, metadata record) pairs."""
    opts, obj = job.options, job.obj
    rng = item_rng(opts.seed, obj.id, job.instance)
    size, frac = opts.size, opts.object_frac
    rgb, mask = load_view(obj.views[0])
    bg_src = _pick(rng, job.typical)
    bg, bg_params = fit_background(open_image(bg_src.image), size, rng)
    o_rgb, o_mask = fit_object(rgb, mask, round(frac * size))
    centre = (size / 2, size / 2)
    base = {"background": bg_src.id, **bg_params, "object_frac": frac, "center": list(centre)}
    image, fg = composite(bg, o_rgb, o_mask, centre)
    stem = f"{obj.id}-{job.instance}"
    source_id = f"{obj.id}/{job.instance}"
    rows: list[tuple[str, dict]] = []

    def emit(subset: str, name: str, img: np.ndarray, msk: np.ndarray, variation: dict) -> None:
        folder = slug(obj.label, hashed=False)
        rel, mask_rel = _save(job.out / subset, f"{folder}/{name}.png", img, msk)  # subset-relative
        record = {"file_name": rel, "label": job.label, "mask": mask_rel, "source_id": source_id}
        rows.append((subset, {**record, "variation": {"transform": subset, **variation}}))

    emit("original", stem, image, fg, base)
    alt_src = _pick(rng, [b for b in job.others if b.id != bg_src.id] or job.others)
    alt, alt_params = fit_background(open_image(alt_src.image), size, rng)
    alt_variation = {**base, "background": alt_src.id, **alt_params, "original_background": bg_src.id}
    alt_image, alt_mask = composite(alt, o_rgb, o_mask, centre)
    emit("bg_varied", stem, alt_image, alt_mask, alt_variation)
    for subset, fn in (("hflip", hflip), ("vflip", vflip)):
        img, msk, params = fn(image, fg)
        emit(subset, stem, img, msk, {**base, **params})
    img, msk, params = rotate(image, fg, int(rng.choice(ROTATIONS)))
    emit("rotation", stem, img, msk, {**base, **params})
    dx, dy = translate_shift(size, o_mask.shape, rng)
    t_centre = (centre[0] + dx, centre[1] + dy)
    shifted = {**base, "center": list(t_centre), "shift": [dx, dy]}
    t_image, t_mask = composite(bg, o_rgb, o_mask, t_centre)
    emit("translate", stem, t_image, t_mask, shifted)
    img, msk, params = crop_tight(image, fg)
    emit("crop", stem, img, msk, {**base, **params})
    for factor, tag in zip(SCALE_FACTORS, ("smaller", "larger")):
        s_rgb, s_mask = fit_object(rgb, mask, round(frac * factor * size))
        scaled = {**base, "scale": factor, "object_frac": frac * factor}
        s_image, s_fg = composite(bg, s_rgb, s_mask, centre)
        emit("scale", f"{stem}-{tag}", s_image, s_fg, scaled)
    for v, view in enumerate(obj.views[1:], start=1):
        v_rgb, v_mask = load_view(view)
        vo_rgb, vo_mask = fit_object(v_rgb, v_mask, round(frac * size))
        v_image, v_fg = composite(bg, vo_rgb, vo_mask, centre)
        emit("viewpoint", f"{stem}-view{v}", v_image, v_fg, {**base, "view": v})
    return rows


def plan(
    objects: Sequence[ObjectSource], backgrounds: Sequence[BackgroundSource], out: Path, options: BuildOptions
) -> tuple[list[str], list[ItemJob]]:
    """Classes (sorted) and one job per object instance, each with its typical and its other backgrounds."""
    if not objects:
        raise BuildError("no objects given")
    if not backgrounds:
        raise BuildError("no backgrounds given")
    if options.size < 16:
        raise BuildError(f"--size must be >= 16, got {options.size}")
    if options.per_object < 1:
        raise BuildError(f"--per-object must be >= 1, got {options.per_object}")
    if len(backgrounds) < 2:
        raise BuildError("bg_varied needs at least two background images")
    ids = [o.id for o in objects]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise BuildError(f"duplicate object id(s): {', '.join(dup[:5])}")
    classes = sorted({o.label for o in objects})
    jobs = []
    for obj in objects:
        typical = tuple(b for b in backgrounds if b.label == obj.label)
        generic = tuple(b for b in backgrounds if b.label is None)
        pool = typical or generic or tuple(backgrounds)
        others = (
            tuple(b for b in backgrounds if b.label != obj.label and b not in pool)
            or tuple(b for b in backgrounds if b.label != obj.label)
            or tuple(backgrounds)
        )
        for k in range(options.per_object):
            jobs.append(ItemJob(obj, k, classes.index(obj.label), pool, others, out, options))
    return classes, jobs


def _run_jobs(jobs: list[ItemJob], workers: int, progress: Callable[[int], None] | None) -> list[list]:
    """Run the jobs in a process pool (or inline for one worker); results come back in job order."""
    results: list[list] = [[] for _ in jobs]
    if workers <= 1 or len(jobs) <= 1:
        for i, job in enumerate(jobs):
            results[i] = build_item(job)
            if progress:
                progress(1)
        return results

    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(build_item, job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            if progress:
                progress(1)
    return results


def _write_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))


def holds_build(out: Path) -> bool:
    """``out`` carries a build stamp: the start marker, or a ``build.json`` with a ``build_version``."""

    if (out / BUILD_MARKER).is_file():
        return True
    try:
        info = json.loads(read_text_capped(out / "build.json"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "build_version" in info


def _remove_previous(out: Path) -> None:
    """Delete what a build writes (only called on a folder that :func:`holds_build`); links are unlinked, not
    followed."""
    for name in (*ALL_SUBSETS, "classes.json", "build.json", BUILD_MARKER):
        p = out / name
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse to mix with existing content; with ``overwrite``, replace only a previous build (stamped), never a
    folder of other files. Then mark the folder as a build before anything is written."""
    if os.path.lexists(out) and not out.is_dir():
        raise BuildError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise BuildError(f"--out {out} is not empty; pass --overwrite to replace a previous build")
        if not holds_build(out):
            raise BuildError(
                f"--out {out} is not empty and holds no previous build (no build.json or "
                f"{BUILD_MARKER}); refusing to replace it, even with --overwrite: choose a new or empty "
                "folder"
            )
        _remove_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / BUILD_MARKER, json.dumps({"build_version": BUILD_VERSION}) + "\n")


def _single_view_note(objects: Sequence[ObjectSource]) -> list[str]:
    if any(len(o.views) > 1 for o in objects):
        return []
    return [
        (
            "every object has a single view, so this build has no viewpoint subset (give several views per object "
            "in the objects' manifest.json for one); viewpoint tasks on it are skipped with a note"
        )
    ]


def build(
    objects: Sequence[ObjectSource],
    backgrounds: Sequence[BackgroundSource],
    out: Path,
    options: BuildOptions = BuildOptions(),
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> BuildReport:
    """Build the COVAR layout in ``out``. ``progress(n)`` is called as items finish (for a progress bar)."""
    out = Path(out)
    classes, jobs = plan(objects, backgrounds, out, options)
    prepare_out(out, overwrite)
    if on_plan:
        on_plan(len(jobs))
    workers = options.workers or os.cpu_count() or 1
    rows_by_subset: dict[str, list[dict]] = {}
    for rows in _run_jobs(jobs, workers, progress):
        for subset, record in rows:
            rows_by_subset.setdefault(subset, []).append(record)
    _write_atomic(out / "classes.json", json.dumps(classes, indent=1) + "\n")
    for subset, records in rows_by_subset.items():
        _write_atomic(out / subset / "metadata.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    counts = {s: len(records) for s, records in rows_by_subset.items()}  # in the order build_item makes them
    notes = _single_view_note(objects)
    info = {
        "build_version": BUILD_VERSION,
        "seed": options.seed,
        "size": options.size,
        "per_object": options.per_object,
        "object_frac": options.object_frac,
        "n_objects": len(objects),
        "n_backgrounds": len(backgrounds),
        "classes": classes,
        "subsets": counts,
        "paths": "relative to the subset folder",
        "max_views": max(len(o.views) for o in objects),
        "notes": notes,
    }
    _write_atomic(out / "build.json", json.dumps(info, indent=1) + "\n")
    return BuildReport(out, classes, counts, notes)


def is_complete(out: Path) -> bool:
    """True when a build finished: ``build.json`` is written last, after every subset's metadata."""
    try:
        info = json.loads((Path(out) / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all((Path(out) / s / "metadata.jsonl").is_file() for s in info.get("subsets", {}))


def build_from_folders(
    objects_dir: Path,
    backgrounds_dir: Path,
    out: Path,
    options: BuildOptions,
    *,
    overwrite: bool = False,
    progress=None,
    on_plan=None,
) -> BuildReport:
    objects = discover_objects(objects_dir)
    backgrounds = discover_backgrounds(backgrounds_dir, sorted({o.label for o in objects}))
    return build(objects, backgrounds, out, options, overwrite=overwrite, progress=progress, on_plan=on_plan)


def iter_records(out: Path, subset: str) -> Iterable[dict]:
    """A subset's metadata records with ``file_name`` and ``mask`` relative to ``out``, whatever the build version
    (the same ids the ``covar`` reader gives)."""

    prefix = f"{subset}/" if subset_relative(Path(out)) else ""
    with open(Path(out) / subset / "metadata.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                for key in ("file_name", "mask"):
                    if isinstance(rec.get(key), str):
                        rec[key] = prefix + rec[key]
                yield rec


# --------------------------------------------------------------------------------------------------- CLI
def cmd_build_covar(args) -> int:
    """Handler of ``covar-harness build-covar``: discover inputs, build with a progress bar, print counts."""

    if args.workers is not None and args.workers < 1:
        raise BuildError(f"--workers must be >= 1, got {args.workers}")
    options = BuildOptions(seed=args.seed, size=args.size, per_object=args.per_object, workers=args.workers)
    err = Console(stderr=True, highlight=False)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("building COVAR variants", total=None)
        report = build_from_folders(
            args.objects,
            args.backgrounds,
            args.out,
            options,
            overwrite=args.overwrite,
            progress=lambda n: bar.advance(task, n),
            on_plan=lambda total: bar.update(task, total=total),
        )
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items())
    out = Console(highlight=False)
    out.print(f"built {report.out}: {len(report.classes)} classes; {counts}", markup=False)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)
    return 0
