"""Per model x task pages: metrics, provenance, and a gallery from the ``--log-samples`` log (+ ``--save-maps``).

The gallery shows the most background-driven errors (misclassified, driver ``bg``, lowest foreground fraction
first) and the most foreground-driven correct decisions (driver ``fg``, highest foreground fraction first).
Each card: the ``--save-maps`` overlay copied into the site (when ``--maps`` is given), the importance of each
patch on the model's patch grid (inline SVG), label, prediction, driver, fg fraction, error type, and one bar
per cluster. The log is read as a stream (one line at a time, lines and file size capped), and every field is
checked before use: a stranger's log can hide a sample, never break the page.
"""

from __future__ import annotations

import heapq
import math
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covar_harness.attribution.overlays import OPPOSE_HEX, SUPPORT_HEX
from covar_harness.common.safe_files import parse_json, slug
from covar_harness.leaderboard.report.html import esc, n_errors, pct
from covar_harness.results import files as results
from covar_harness.results import validation

MAX_LOG_BYTES = 4 << 30  # a per-sample log of ImageNet with CCI is ~100 MB
MAX_LINE = 4 << 20
MAX_MAP_BYTES = 32 << 20
MAX_CLUSTERS = 64
MAX_PATCHES = 4096
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POSITIVE, NEGATIVE = SUPPORT_HEX, OPPOSE_HEX  # the overlays' colours: one language across the report


@dataclass
class Gallery:
    n_rows: int = 0
    n_bad: int = 0  # lines that were not a usable sample
    n_errors: int = 0
    n_bg_errors: int = 0
    n_fg_correct: int = 0
    bg_errors: list[dict] = field(default_factory=list)
    fg_correct: list[dict] = field(default_factory=list)
    problem: str | None = None  # why there is no gallery (no log, unreadable log)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9 else None


def _num(value: Any) -> float | None:
    return float(value) if results.is_number(value) else None


def _usable(row: Any) -> bool:
    return isinstance(row, dict) and _int(row.get("index")) is not None and isinstance(row.get("correct"), bool)


def read_gallery(path: Path, n: int) -> Gallery:
    """The ``n`` most background-driven errors and ``n`` most foreground-driven correct decisions of a log."""
    g = Gallery()
    try:
        info = os.stat(path)
    except OSError:
        g.problem = "no per-sample log (run with --log-samples)"
        return g
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_LOG_BYTES:
        g.problem = "per-sample log skipped: not a regular file, or too large"
        return g
    bg: list[tuple] = []
    fg: list[tuple] = []
    try:
        with open(path, "rb") as fh:
            while True:
                line = fh.readline(MAX_LINE + 1)
                if not line:
                    break
                if len(line) > MAX_LINE:
                    g.n_bad += 1
                    while line and not line.endswith(b"\n"):  # skip the rest of the overlong line
                        line = fh.readline(MAX_LINE)
                    continue
                if not line.strip():
                    continue
                try:
                    row = parse_json(line, "")
                except ValueError:
                    g.n_bad += 1
                    continue
                if not _usable(row):
                    g.n_bad += 1
                    continue
                g.n_rows += 1
                _offer(g, row, bg, fg, n)
    except OSError as exc:
        g.problem = f"per-sample log unreadable: {exc.strerror or exc}"
        return g
    g.bg_errors = [item[-1] for item in sorted(bg, key=lambda t: t[:2], reverse=True)]
    g.fg_correct = [item[-1] for item in sorted(fg, key=lambda t: t[:2], reverse=True)]
    return g


def _offer(g: Gallery, row: dict, bg: list, fg: list, n: int) -> None:
    """Keep the ``n`` best of each kind in a heap: (rank, -index, row); larger rank = shown first."""
    frac = _num(row.get("fg_fraction"))
    index = row["index"]
    if not row["correct"]:
        g.n_errors += 1
        if row.get("driver") == "bg":
            g.n_bg_errors += 1
            item = (-(frac if frac is not None else 1.0), -index, row)  # lowest fg fraction first
            _push(bg, item, n)
    elif row.get("driver") == "fg":
        g.n_fg_correct += 1
        _push(fg, ((frac if frac is not None else 0.0), -index, row), n)


def _push(heap: list, item: tuple, n: int) -> None:
    if n <= 0:
        return
    key = item[:2]
    if len(heap) < n:
        heapq.heappush(heap, (*key, id(item[2]), item[2]))
    elif key > heap[0][:2]:
        heapq.heapreplace(heap, (*key, id(item[2]), item[2]))


# ---- maps ----------------------------------------------------------------------------------------------
def find_map(folder: Path | None, row: dict) -> Path | None:
    """The ``--save-maps`` PNG of a sample: ``<index:06d>_<slug(file stem)>.png``, else any
    ``<index:06d>_*.png`` (later versions add to the name). Regular PNG files under a size cap only."""
    if folder is None:
        return None
    index = row["index"]
    candidates = []
    file = row.get("file")
    if isinstance(file, str) and file:
        candidates.append(folder / f"{index:06d}_{slug(Path(file).stem)}.png")
    try:
        candidates += sorted(folder.glob(f"{index:06d}_*.png"))
    except OSError:
        pass
    for path in candidates:
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MAP_BYTES:
                continue
            with open(path, "rb") as fh:
                if fh.read(8) == PNG_MAGIC:
                    return path
        except OSError:
            continue
    return None


def copy_map(src: Path, dest: Path) -> bool:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest, follow_symlinks=False)
        return True
    except OSError:
        return False


# ---- one card ------------------------------------------------------------------------------------------
def _class(value: Any, names: list[str] | None) -> str:
    idx = _int(value)
    if idx is None:
        return "?"
    if names is not None and idx < len(names):
        return f'{esc(names[idx])} <span class="muted">({idx})</span>'
    return f"class {idx}"


def class_label(value: Any, names: list[str] | None) -> str:
    """A class index as its escaped name and index (``class N`` without names): for other report sections."""
    return _class(value, names)


def cluster_values(row: dict) -> tuple[list[float], list[int]] | None:
    """(importance per cluster, cluster id per patch) when the log has a usable ``cci`` record."""
    cci = row.get("cci")
    if not isinstance(cci, dict):
        return None
    imp, assign = cci.get("importance"), cci.get("assignments")
    if not (isinstance(imp, list) and 0 < len(imp) <= MAX_CLUSTERS):
        return None
    values = [_num(v) or 0.0 for v in imp]
    if not (isinstance(assign, list) and 0 < len(assign) <= MAX_PATCHES and all(_int(a) is not None for a in assign)):
        assign = []
    return values, assign


def importance_bars(values: list[float], assign: list[int]) -> str:
    """One horizontal bar per cluster (yellow: removing it lowers the score, dark blue: raises it, as in the
    overlay), with the value and the cluster's patch count."""
    peak = max((abs(v) for v in values), default=0.0) or 1.0
    row_h, left, width = 16, 92, 150
    parts = []
    for k, v in enumerate(values):
        y = k * row_h
        bar = abs(v) / peak * (width / 2)
        x = left + width / 2 if v >= 0 else left + width / 2 - bar
        count = sum(1 for a in assign if a == k)
        parts.append(
            f'<text x="0" y="{y + 12}">cluster {k}' + (f" ({count})" if assign else "") + "</text>"
            f'<rect x="{x:.1f}" y="{y + 3}" width="{bar:.1f}" height="10" '
            f'fill="{POSITIVE if v >= 0 else NEGATIVE}"/>'
            f'<text x="{left + width + 6}" y="{y + 12}">{v:+.3f}</text>'
        )
    height = row_h * len(values) + 2
    mid = left + width / 2
    return (
        f'<svg class="bars" role="img" aria-label="importance per cluster" width="{left + width + 52}" '
        f'height="{height}" viewBox="0 0 {left + width + 52} {height}">'
        f'<line x1="{mid}" y1="0" x2="{mid}" y2="{height}" stroke="#999" stroke-width="1"/>' + "".join(parts) + "</svg>"
    )


def patch_grid(values: list[float], assign: list[int], size: int = 112) -> str:
    """The importance of each patch (its cluster's) on the model's square patch grid, cluster borders in grey."""
    side = math.isqrt(len(assign))
    if side < 2 or side * side != len(assign):
        return ""
    peak = max((abs(v) for v in values), default=0.0) or 1.0
    cell = size / side

    def n(x: float) -> str:  # short numbers keep a page of 24 grids small
        return f"{x:.4g}"

    rects, lines = [], []
    for i, a in enumerate(assign):
        r, c = divmod(i, side)
        v = values[a] if a < len(values) else 0.0
        if v:
            rects.append(
                f'<rect x="{n(c * cell)}" y="{n(r * cell)}" width="{n(cell)}" height="{n(cell)}" '
                f'fill="{POSITIVE if v > 0 else NEGATIVE}" fill-opacity="{abs(v) / peak * 0.9:.2f}"/>'
            )
        if c + 1 < side and assign[i + 1] != a:
            lines.append(f"M{n((c + 1) * cell)} {n(r * cell)}v{n(cell)}")
        if r + 1 < side and assign[i + side] != a:
            lines.append(f"M{n(c * cell)} {n((r + 1) * cell)}h{n(cell)}")
    return (
        f'<svg class="grid" role="img" aria-label="importance on the patch grid" width="{size}" height="{size}" '
        f'viewBox="0 0 {size} {size}"><rect width="{size}" height="{size}" fill="#fff" stroke="#ccc"/>'
        + "".join(rects)
        + f'<path d="{"".join(lines)}" stroke="#555" stroke-width="1" fill="none"/></svg>'
    )


def card(row: dict, names: list[str] | None, image: str | None) -> str:
    """One gallery card; ``image``: the copied overlay's href (a site-relative path we built), or None."""
    correct = row["correct"]
    frac = _num(row.get("fg_fraction"))
    clusters = cluster_values(row)
    grid = patch_grid(*clusters) if clusters and clusters[1] else ""
    img = f'<img src="{esc(image)}" alt="CCI overlay of sample {row["index"]}">' if image else ""
    # the overlay shows the same importances on the image; the patch grid stands in for it when there is none
    maps = f'<div class="overlay">{img}</div>' if img else (f'<div class="maps">{grid}</div>' if grid else "")
    facts = [
        ("label", _class(row.get("label"), names)),
        ("prediction", _class(row.get("pred"), names)),
        ("outcome", '<span class="ok">correct</span>' if correct else '<span class="bad">wrong</span>'),
        ("driver", esc(row.get("driver", "-"))),
        ("fg fraction", "-" if frac is None else f"{frac:.2f}"),
    ]
    if not correct:
        facts.append(("error type", esc(row.get("error_type", "-"))))
    top5 = row.get("top5")
    if isinstance(top5, list) and top5:
        facts.append(("top-5", ", ".join(_class(t, names) for t in top5[:5])))
    cf = row.get("counterfactual")
    if isinstance(cf, dict) and isinstance(cf.get("outcome"), str):
        facts.append(("region test", esc(cf["outcome"])))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    bars = importance_bars(*clusters) if clusters else '<p class="note">no CCI record</p>'
    file = row.get("file")
    name = (
        f'<div class="file">#{row["index"]} {esc(file)}</div>'
        if isinstance(file, str)
        else f'<div class="file">#{row["index"]}</div>'
    )
    return f'<div class="card">{maps}{name}<dl>{dl}</dl>{bars}</div>'


_SWATCHES = (
    '<span><span class="swatch sw-pos"></span>yellow: removing the cluster lowers the score (it supports the '
    'decision)</span><span><span class="swatch sw-neg"></span>dark blue: removing it raises the score</span>'
)
OVERLAY_LEGEND = (
    '<div class="legend">' + _SWATCHES + '<span><span class="swatch sw-bound"></span>white: cluster boundaries '
    '(overlay, left panel)</span><span><span class="swatch sw-mask"></span>cyan: object mask outline (overlay, '
    "right panel)</span><span>opacity: |importance| relative to the largest in the image; bars: "
    "importance per cluster (patches in it)</span></div>"
)
GRID_LEGEND = (
    '<div class="legend">' + _SWATCHES + "<span>squares: the model's patch grid, grey lines between "
    "clusters; opacity: |importance| relative to the largest in the image; bars: importance per cluster "
    "(patches in it)</span></div>"
)


def section(title: str, rows: list[dict], total: int, what: str, names, images: dict[int, str]) -> str:
    head = f'<h3>{title} <span class="muted">({len(rows)} of {total})</span></h3>'
    if not rows:
        return head + f'<p class="note">No {what} in this log.</p>'
    return head + '<div class="gallery">' + "".join(card(r, names, images.get(r["index"])) for r in rows) + "</div>"


def gallery_html(g: Gallery, names: list[str] | None, images: dict[int, str], maps_given: bool = False) -> str:
    if g.problem:
        return f'<p class="note">{esc(g.problem)}</p>'
    bad = f" {g.n_bad} line(s) of the log were not usable samples and are left out." if g.n_bad else ""
    intro = (
        f'<p class="note">{g.n_rows} logged samples, {g.n_errors} errors, {g.n_bg_errors} background-driven '
        f"errors, {g.n_fg_correct} foreground-driven correct decisions.{bad}"
        + (
            ""
            if images or not (g.bg_errors or g.fg_correct)
            else " No overlays of these samples under <code>--maps</code>."
            if maps_given
            else " Overlays: pass <code>--maps DIR</code> (the run's <code>--save-maps</code> folder) to show them."
        )
        + "</p>"
    )
    return (
        intro
        + (OVERLAY_LEGEND if images else GRID_LEGEND)
        + section(
            "Most background-driven errors", g.bg_errors, g.n_bg_errors, "background-driven errors", names, images
        )
        + section(
            "Most foreground-driven correct decisions",
            g.fg_correct,
            g.n_fg_correct,
            "foreground-driven correct decisions",
            names,
            images,
        )
    )


def metrics_table(rec: dict) -> str:
    rows = []
    intervals = rec.get("intervals", {})
    for key, value in rec.get("metrics", {}).items():
        interval = intervals.get(key)
        span = (
            f"[{pct(interval[0])}, {pct(interval[1])}]"
            if isinstance(interval, list) and len(interval) == 2 and all(results.is_number(v) for v in interval)
            else "-"
        )
        fraction = key in validation.FRACTION_METRICS or key.endswith("_null") or key.startswith(("bg_er", "fine_er"))
        shown = pct(value) if fraction else (f"{value:.4g}" if results.is_number(value) else "-")
        rows.append(f'<tr><th scope="row" class="text">{esc(key)}</th><td>{shown}</td><td>{span}</td></tr>')
    n = n_errors(rec)
    extra = f", {n} errors diagnosed" if n is not None else ""
    return (
        f'<table><thead><tr><th class="text">metric</th><th>value (%)</th><th>95% interval</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table><p class="note">n = {esc(rec["task"].get("n_samples"))} '
        f"images ({esc(rec['task'].get('n_failed'))} failed){extra}.</p>"
    )
