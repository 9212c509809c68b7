"""``covar-harness report RESULTS_DIR --out SITE_DIR``: a static, self-contained site of a results folder.

Layout of the site (every name we write is fixed or a ``slug``; nothing points outside the site)::

    index.html                              tables, plots, pair list, provenance, downloads, skipped files
    assets/report.css, assets/report.js     our own static files (no CDN, no data inside)
    plots/*.svg                             matplotlib plots
    pairs/<slug(model)>/<slug(task)>.html   one page per model x task: metrics, provenance, gallery
    pairs/<slug(model)>/<slug(task)>/NNNNNN.png   the gallery's --save-maps overlays, copied
    leaderboard.csv, leaderboard.json, leaderboard.md   the leaderboard's own renderers
    .covar-harness-report, .nojekyll        marker of a report folder; GitHub Pages serves "_" names as is

The tables are ``leaderboard.collect`` + ``leaderboard.build_tables``, so the numbers are the terminal
leaderboard's. An existing ``--out`` is replaced only when it holds an earlier report; any other non-empty
folder is refused (nothing of the user's is deleted).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness import __version__
from covar_harness.catalog.plugin_manager import load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import markup, one_line
from covar_harness.common.safe_files import read_json, slug
from covar_harness.data.resources import named
from covar_harness.data.samples import explicit_classnames, resolve_dataset
from covar_harness.leaderboard import generated_folders, render
from covar_harness.leaderboard import tables as lb
from covar_harness.leaderboard.report import gallery as gal
from covar_harness.leaderboard.report.concepts import concepts_section
from covar_harness.leaderboard.report.html import ASSETS, asset_text, esc, page, render_tables, skipped_list
from covar_harness.leaderboard.report.plots import draw_plots
from covar_harness.results import files as results
from covar_harness.results import validation

MARKER = ".covar-harness-report"
PROVENANCE = ("harness_version", "git_commit", "python", "torch", "open_clip", "transformers", "device")

if TYPE_CHECKING:
    from covar_harness.catalog.plugin_manager import Catalog


@dataclass
class Pair:
    record: dict
    path: Path | None  # the result file (for its samples log)
    href: str  # from the site root: pairs/<slug(model)>/<slug(task)>.html


@dataclass
class Built:
    out: Path
    n_records: int = 0
    n_invalid: int = 0
    plots: list[str] = field(default_factory=list)
    pages: int = 0
    images: int = 0
    seconds: float = 0.0


def pair_href(rec: dict) -> str:
    return f"pairs/{slug(rec['model']['spec'])}/{slug(rec['task']['name'])}.html"


def result_paths(directory: Path) -> dict[tuple[str, str], Path]:
    """(model spec, task name) -> the result file the leaderboard used (the last valid one, as ``collect``)."""
    found: dict[tuple[str, str], Path] = {}
    for path in results.result_files(directory)[0]:
        try:
            obj = results.load(path)
            if validation.validate(obj):
                continue
        except Exception:
            continue
        found[(obj["model"]["spec"], obj["task"]["name"])] = path
    return found


# ---- class names (best effort: only for labels in the gallery) -----------------------------------------
class ClassNames:
    """Class names of a task from the local task catalog and data, when they can be found cheaply: explicit
    ``classnames``, a COVAR ``classes.json`` in the data dir, or ImageNet names; else None (labels as ids)."""

    def __init__(self, data_dir: Path | None, include_paths: list):
        self.data_dir, self.include_paths = data_dir, include_paths
        self.catalog: Catalog | None = None
        self.cache: dict[str, list[str] | None] = {}

    def __call__(self, rec: dict) -> list[str] | None:
        task = rec["task"]["name"]
        if task not in self.cache:
            try:
                names = self._find(task)
            except Exception:
                names = None
            ok = isinstance(names, list) and len(names) == rec["task"].get("n_classes")
            self.cache[task] = [str(n) for n in names] if ok and names is not None else None
        return self.cache[task]

    def _find(self, task: str) -> list[str] | None:
        if self.catalog is None:
            self.catalog = load_catalog(self.include_paths)
        if task not in self.catalog.tasks:
            return None
        cfg = self.catalog.tasks.get(task)
        if cfg.classnames is not None:
            return explicit_classnames(cfg)
        ds, _root = resolve_dataset(cfg, self.data_dir)
        if ds.get("format") in ("covar", "covar-shapes") and ds.get("path"):
            return _covar_classes(Path(ds["path"]) / "classes.json")
        if ds.get("format") == "counteranimals" and ds.get("label_space", "imagenet1k") == "imagenet1k":
            return list(named("classnames", "imagenet1k_wordnet"))  # the loader's fallback names, label order
        return None


# ---- output folder -------------------------------------------------------------------------------------
def check_out(out: Path) -> None:
    """``--out`` must be missing, empty, or an earlier report (see ``leaderboard.generated_folders``)."""
    generated_folders.check_out(out, MARKER, "report")


# ---- the site ------------------------------------------------------------------------------------------
def build_site(
    results_dir: Path,
    out: Path,
    *,
    maps: Path | None = None,
    reference: str | None = None,
    gallery: int = 12,
    data_dir: Path | None = None,
    include_paths: list | None = None,
    title: str = "covar-harness report",
    console=None,
) -> Built:
    started = time.perf_counter()
    results_dir, out = Path(results_dir), Path(out)
    if not results_dir.is_dir():
        raise UsageError(f"results folder {one_line(results_dir)!r} does not exist")
    if maps is not None and not Path(maps).is_dir():
        raise UsageError(f"--maps {one_line(maps)!r} is not a folder")
    check_out(out)
    loaded = lb.collect(results_dir)
    if console is not None:
        for path, why in loaded.invalid:
            console.print(f"[yellow]skipped invalid result {markup(path)}: {markup(why)}[/yellow]", soft_wrap=True)
    if not loaded.records and not loaded.faithfulness and reference is None:
        raise UsageError(f"no valid result files under {one_line(results_dir)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with generated_folders.building(out) as tmp:
        built = _write(
            tmp, loaded, results_dir, maps, reference, gallery, ClassNames(data_dir, list(include_paths or [])), title
        )
        generated_folders.swap_in(tmp, out)
    built.out = out
    built.seconds = time.perf_counter() - started
    return built


def _write(
    site: Path,
    loaded: lb.Loaded,
    results_dir: Path,
    maps: Path | None,
    reference: str | None,
    n_gallery: int,
    names: ClassNames,
    title: str,
) -> Built:
    records = loaded.records
    tables = lb.build_tables(records, reference, loaded.faithfulness)
    built = Built(site, n_records=len(records), n_invalid=len(loaded.invalid))
    (site / "assets").mkdir()
    for name in ASSETS:
        (site / "assets" / name).write_text(asset_text(name), encoding="utf-8")
    (site / MARKER).write_text(json.dumps({"generator": "covar-harness report", "version": __version__}) + "\n")
    (site / ".nojekyll").write_text("")
    (site / "leaderboard.csv").write_text(render.render_csv(records, reference, loaded.faithfulness), encoding="utf-8")
    faith = loaded.faithfulness
    as_json = render.render_json(records, tables, reference, faith)
    (site / "leaderboard.json").write_text(as_json + "\n", encoding="utf-8")
    (site / "leaderboard.md").write_text(render.render_markdown(tables), encoding="utf-8")

    paths = result_paths(results_dir)
    pairs = {}
    for rec in records:  # the last file of a (model, task) wins, as in the leaderboard
        key = (rec["model"]["spec"], rec["task"]["name"])
        pairs[key] = Pair(rec, paths.get(key), pair_href(rec))
    for pair in pairs.values():
        built.images += _pair_page(site, pair, maps, n_gallery, names, title)
        built.pages += 1

    plots = draw_plots(records, reference, site / "plots")
    built.plots = [name for name, _caption in plots]
    body = _index_body(tables, records, pairs, plots, loaded, results_dir, reference)
    subtitle = (
        f"{len(records)} result file(s), {len({k[0] for k in pairs})} model(s), "
        f"{len({k[1] for k in pairs})} task(s). Hover a number for its 95% interval and n; click a header "
        "to sort; click a number for its model x task page."
    )
    (site / "index.html").write_text(page(title, body, subtitle=esc(subtitle)), encoding="utf-8")
    return built


NAV = (
    '<nav class="toc"><a href="#tables">Tables</a><a href="#plots">Plots</a><a href="#pairs">Model x task pages'
    '</a><a href="#provenance">Provenance</a><a href="#downloads">Downloads</a></nav>'
)


def _index_body(tables, records, pairs, plots, loaded, results_dir, reference) -> str:
    parts = [NAV, "<main>", '<h2 id="tables">Leaderboard</h2>']
    parts.append(render_tables(tables, records, link=lambda rec: pair_href(rec)) or '<p class="note">No tables.</p>')
    parts.append('<h2 id="plots">Plots</h2>')
    if not plots:
        parts.append('<p class="note">Nothing to plot.</p>')
    for name, caption in plots:
        parts.append(
            f'<figure><img src="plots/{esc(name)}" alt="{esc(caption)}"><figcaption>{esc(caption)}'
            "</figcaption></figure>"
        )
    parts.append(
        '<h2 id="pairs">Model x task pages</h2><p class="note">Metrics, provenance and the gallery of '
        "the most background-driven errors and the most foreground-driven correct decisions.</p>"
    )
    by_model: dict[str, list[Pair]] = {}
    for (spec, _task), pair in pairs.items():
        by_model.setdefault(spec, []).append(pair)
    for spec, items in by_model.items():
        links = ", ".join(f'<a href="{esc(p.href)}">{esc(p.record["task"]["name"])}</a>' for p in items)
        parts.append(f"<h3>{esc(spec)}</h3><p>{links}</p>")
    parts.append('<h2 id="provenance">Provenance</h2>' + _provenance_table(list(pairs.values())))
    parts.append(
        '<h2 id="downloads">Downloads</h2><ul><li><a href="leaderboard.csv" download>leaderboard.csv</a>: '
        'one row per model x task x metric</li><li><a href="leaderboard.json" download>leaderboard.json'
        '</a>: the same rows and the tables</li><li><a href="leaderboard.md" download>leaderboard.md</a>: '
        "the tables in markdown</li></ul>"
        + ('<p class="note">With the published rows (<code>--reference paper</code>).</p>' if reference else "")
    )
    parts.append(skipped_list(loaded.invalid, results_dir))
    parts.append(
        f"</main><footer>Built by covar-harness {esc(__version__)} <code>report</code>. Static files "
        "only: open index.html directly or serve the folder.</footer>"
    )
    return "\n".join(parts)


def _text(value: Any, limit: int = 80) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _provenance_table(pairs: list[Pair]) -> str:
    cols = ["model", "task", *PROVENANCE, "data fingerprint", "finished"]
    head = "".join(f'<th scope="col" data-type="text" class="text">{esc(c)}</th>' for c in cols)
    rows = []
    for p in pairs:
        rec, prov = p.record, p.record.get("provenance", {})
        values = [_text(prov.get(k)) for k in PROVENANCE]
        values[1] = values[1][:12]  # git commit
        cells = [
            f'<td class="text"><a href="{esc(p.href)}">{esc(rec["model"]["spec"])}</a></td>',
            f'<td class="text">{esc(rec["task"]["name"])}</td>',
        ]
        cells += [f'<td class="text">{esc(v)}</td>' for v in values]
        cells += [
            f'<td class="text">{esc(_text(rec["task"].get("data_fingerprint")))}</td>',
            f'<td class="text">{esc(_text(prov.get("finished_at")))}</td>',
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="sortable provenance"><thead><tr>{head}</tr></thead><tbody>'
        + "\n".join(rows)
        + "</tbody></table></div>"
    )


def _pair_page(site: Path, pair: Pair, maps: Path | None, n: int, names: ClassNames, title: str) -> int:
    """Write one model x task page (and copy its overlays); returns the number of images copied."""
    rec = pair.record
    spec, task = rec["model"]["spec"], rec["task"]["name"]
    page_path = site / pair.href
    page_path.parent.mkdir(parents=True, exist_ok=True)
    log = results.samples_path(pair.path) if pair.path is not None else None
    if n == 0:
        g = gal.Gallery(problem="no gallery (--gallery 0)")
    else:
        g = gal.read_gallery(log, n) if log is not None else gal.Gallery(problem="no per-sample log")
    folder = (Path(maps) / slug(spec) / slug(task)) if maps is not None else None
    images: dict[int, str] = {}
    for row in g.bg_errors + g.fg_correct:
        src = gal.find_map(folder, row)
        if src is not None and row["index"] not in images:
            rel = f"{slug(task)}/{row['index']:06d}.png"
            if gal.copy_map(src, page_path.parent / rel):
                images[row["index"]] = rel
    class_names = names(rec) if (g.bg_errors or g.fg_correct) else None
    facts = _pair_facts(rec)
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    notes = rec.get("notes") or []
    notes_html = (
        "<h2>Notes</h2><ul>" + "".join(f"<li>{esc(one_line(x))}</li>" for x in notes) + "</ul>" if notes else ""
    )
    body = (
        f'<nav class="toc"><a href="../../index.html">&larr; leaderboard</a></nav><main>'
        f'<h2>Metrics</h2>{gal.metrics_table(rec)}<h2>Provenance</h2><dl class="kv">{dl}</dl>{notes_html}'
        f"{concepts_section(rec, g.bg_errors, class_names, images)}"
        f"<h2>Gallery</h2>{gal.gallery_html(g, class_names, images, maps is not None)}</main>"
    )
    page_path.write_text(
        page(f"{spec} x {task}", body, root="../../", subtitle=f'<a href="../../index.html">{esc(title)}</a>'),
        encoding="utf-8",
    )
    return len(images)


def _covar_classes(path: Path) -> list[str] | None:
    """A COVAR copy's ``classes.json`` when it is a list of names (the report only labels; the reader validates)."""
    try:
        classes = read_json(path)
    except (OSError, ValueError):
        return None
    return classes if isinstance(classes, list) and all(isinstance(c, str) for c in classes) else None


def _pair_facts(rec: dict) -> list[tuple[str, str]]:
    """The (label, escaped HTML) rows of a pair page's provenance block."""
    spec, task, prov = rec["model"]["spec"], rec["task"]["name"], rec.get("provenance", {})
    facts = [
        ("model", esc(spec)),
        ("task", f"{esc(task)} (version {esc(rec['task'].get('version'))})"),
        ("data fingerprint", esc(_text(rec["task"].get("data_fingerprint")))),
        *[(k.replace("_", " "), esc(_text(prov.get(k)))) for k in PROVENANCE],
        ("finished", esc(_text(prov.get("finished_at")))),
    ]
    config = rec.get("config", {})
    for key, fields in (
        ("attribution", ("method", "status", "k", "target")),
        ("diagnosis", ("rules", "threshold", "status")),
    ):
        block = config.get(key)
        if isinstance(block, dict):
            facts.append((key, esc(_text({k: block.get(k) for k in fields if k in block}, 200))))
    return facts
