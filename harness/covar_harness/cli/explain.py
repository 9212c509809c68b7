"""``covar-harness explain``: CCI for one image, as a table of clusters and an overlay PNG.

The image (and its ``--mask``) is a one-sample task run through the run's one per-sample pass
(``run.pair.image_pass``) with the steps a run builds (``RunOptions.analysis_steps``: the mask step, CCI, the
diagnosis, concept naming), so what explain prints is what a run logs for that image with the same settings: the
prediction and the top-5 (cosine similarities), the clusters of the ``AttributionRecord``, and with ``--mask`` the
``DiagnosisRecord`` under each ``--driver-rule`` (threshold, null share, error type) and the region test.

Explain has no ground truth. ``--label`` gives it; ``--target C`` explains class C as ``--cci-target label`` does in
a run, so C is the label; without either, the label is the prediction (one zero-shot pass more, through the same
``image_pass``), so no error is claimed. ``--sample-id`` is the id a run logged for the image (``file`` in
``samples.jsonl``): k-means and the diagnosis's null are seeded from it, as in the run (default: the file name).
"""

from __future__ import annotations

from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from rich.table import Table

from covar_harness.attribution import CCISettings, overlays
from covar_harness.attribution.base import check_k
from covar_harness.attribution.engine import Attributed, check_model
from covar_harness.attribution.overlays import Caption
from covar_harness.attribution.records import AttributionRecord
from covar_harness.attribution.settings import AttributionSettings
from covar_harness.attribution.step import AttributionStep
from covar_harness.catalog.plugin_manager import Catalog, load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.catalog.taskconfig import TaskConfig
from covar_harness.cli.commands import diagnosis_from_args
from covar_harness.common.console import console as make_console
from covar_harness.common.console import markup
from covar_harness.concepts.banks import resolve_bank
from covar_harness.concepts.naming import ConceptRecord, ConceptStep
from covar_harness.concepts.settings import ConceptSettings
from covar_harness.data.pixels import as_mask, as_rgb, open_image_file
from covar_harness.data.resources import load_list
from covar_harness.data.samples import Sample, SampleSet
from covar_harness.diagnosis.rules import RULES, DiagnosisRecord, DiagnosisSettings
from covar_harness.models.adapter import AdapterContractError, attribution_support
from covar_harness.models.specs import ModelLoadError, load_model
from covar_harness.pipeline.contract import Batch, Finished, PairContext, Pipeline, SampleRecord, Step
from covar_harness.run.options import RunOptions
from covar_harness.run.pair import image_pass
from covar_harness.run.progress import Reporter
from covar_harness.run.text_cache import ClassifierCache, default_text_cache, store_for

CONCEPTS_TOP = 3  # concepts shown per cluster
R = TypeVar("R", bound=SampleRecord)


def parse_classes(text: str) -> list[str]:
    classes = [c.strip() for c in text.split(",") if c.strip()]
    if not classes:
        raise UsageError("--classes needs at least one class name")
    if len(set(classes)) != len(classes):
        raise UsageError("--classes has duplicates")
    return classes


def _load_image(path: Path, what: str = "image", convert: Any = as_rgb) -> Image.Image:
    """The file read as a run reads a sample's image (``as_rgb``) or mask (``as_mask``), before any model loads;
    one line (exit 2) when it cannot be read."""
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist")
    try:
        return open_image_file(path, convert)
    except Exception as exc:  # unreadable, truncated, decompression bomb: one line, exit 2
        raise UsageError(f"cannot read {what} {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def _load_adapter(args: Namespace, settings: CCISettings, catalog: Catalog) -> Any:
    """The model, or one line (exit 2) when it cannot be loaded or attributed: no traceback for a bad spec,
    an unreachable hub or a model that cannot honour ``--k`` / ``--layer``."""

    try:
        adapter = load_model(args.model, args.device, args.precision, None, catalog)
    except UsageError:
        raise
    except Exception as exc:  # one command, one model: its failure is the one line the user sees
        text = str(exc).strip().splitlines()
        raise UsageError(
            str(exc)
            if isinstance(exc, ModelLoadError) and text
            else f"cannot load model {args.model!r}: {type(exc).__name__}: {text[0] if text else ''}"
        ) from exc
    supported, why = attribution_support(adapter)
    if not supported:
        raise UsageError(f"model {args.model!r} cannot be attributed: {why}")
    try:
        check_model(adapter, settings, "cci")
    except (ValueError, AdapterContractError) as exc:  # --k above the patch count, a missing layer, a bad grid
        raise UsageError(str(exc)) from exc
    return adapter


# ---- the image as a one-sample task ---------------------------------------------------------------------------
class OneImage(SampleSet):
    """The image (and its mask) as a one-sample sample set, read once before the model loads: the run's pass
    and the mask step open them through the SampleSet like any task's files."""

    def __init__(self, image: Image.Image, mask: Image.Image | None, sample_id: str, label: int, classes: list[str]):
        meta = {} if mask is None else {"mask": "--mask"}
        super().__init__([Sample(sample_id, label, meta)], list(classes), None, f"explain {sample_id}")
        self.image, self.mask = image, mask

    def open_image(self, index: int) -> Image.Image:
        return self.image.copy()

    def open_mask(self, index: int) -> Image.Image | None:
        return None if self.mask is None else self.mask.copy()


class KeepBatch(Step):
    """The last step of explain's pipeline: keeps the image's batch (pixels, zero-shot scores, what attribution
    left on it for the maps, every earlier step's records). Logs nothing and computes nothing."""

    name = "explain"

    def __init__(self) -> None:
        self.batch: Batch | None = None

    def run_settings(self) -> dict[str, Any]:
        return {}

    def process(self, batch: Batch) -> list:
        self.batch = batch
        return []


@dataclass
class Explained:
    """What the pass made for the image: its batch, the label it ran with, and each step's outcome."""

    batch: Batch
    label: int
    finished: list[Finished]
    classes: list[str]
    notes: list[str] = field(default_factory=list)

    def record(self, kind: type[R]) -> R | None:
        """The image's record of type ``kind`` (None: that step made none)."""
        return self.batch.record(self.batch.indices[0], kind)

    @property
    def pred(self) -> int:
        return self.batch.pred(0)

    @property
    def scores(self) -> list[float]:
        return [float(v) for v in self.batch.logits[0]]


@dataclass
class ExplainSetup:
    """Everything the pass needs besides the image: the loaded model and the run's settings for it."""

    adapter: Any
    catalog: Catalog
    classes: list[str]
    templates: list[str]
    options: RunOptions
    spec: str = "explain"
    classifier: Any = None


def explain_image(
    setup: ExplainSetup, image: Image.Image, mask: Image.Image | None, sample_id: str, label: int | None = None
) -> Explained:
    """The image through the run's pass (``image_pass``) with the run's steps for ``setup.options``; ``label``
    None: the prediction (a zero-shot pass first, with no steps), so the sample is not an error."""

    if label is None:
        rows, _ = image_pass(_context(setup, OneImage(image, mask, sample_id, 0, setup.classes)), Pipeline([]))
        if not rows:
            raise UsageError("the image could not be preprocessed by this model")
        label = int(rows[0][1][0])
    ctx = _context(setup, OneImage(image, mask, sample_id, label, setup.classes))
    keep = KeepBatch()
    pipeline = Pipeline([*setup.options.analysis_steps(), keep])
    pipeline.start(ctx)
    rows, failures = image_pass(ctx, pipeline)
    if failures or keep.batch is None:
        why = failures[0][1] if failures else "no batch"
        raise UsageError(f"the image could not be preprocessed by this model: {why}")
    finished = pipeline.finish()
    notes = [note for done in finished for note in done.summary.notes]
    return Explained(keep.batch, label, finished, setup.classes, notes)


def _context(setup: ExplainSetup, samples: OneImage) -> PairContext:
    task = TaskConfig("explain", {"format": "explain"}, templates=setup.templates)
    return PairContext(
        setup.adapter,
        task,
        samples,
        setup.classes,
        setup.templates,
        setup.spec,
        setup.catalog,
        setup.options,
        Reporter(),
        setup.classifier,
    )


def explain_options(args: Namespace, settings: CCISettings, with_mask: bool, bank: Any) -> RunOptions:
    """The run's options for explain's flags: CCI with ``settings`` (not the auto mode: explain always
    attributes), the dataset segmenter reading ``--mask`` and the diagnosis when a mask is given, concept naming
    with ``--concepts``; one image in one batch, no worker processes, no part file."""
    diagnosis = diagnosis_from_args(args)  # checked with or without a mask: a bad flag is one line either way
    concepts = None
    if bank is not None:
        concepts = ConceptStep(ConceptSettings(bank=str(args.concepts), top=CONCEPTS_TOP), bank)
    return RunOptions(
        batch_size=1,
        workers=0,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        steps=[AttributionStep(AttributionSettings("cci", settings))],
        diagnosis=diagnosis if with_mask else None,
        segmenter="dataset" if with_mask else "none",
        text_cache=default_text_cache(None),
        concepts=concepts,
    )


# ---- the command ----------------------------------------------------------------------------------------------
def cmd_explain(args: Namespace) -> int:
    out, adapter, settings = explain_from_args(args)
    print_explained(out, adapter, args, settings)
    path = args.out or Path(f"{args.image.stem}.cci.png")
    _write_overlay(path, adapter, out, _caption(args, out))
    make_console().print(f"overlay written to {markup(path)}")
    return 0


def explain_from_args(args: Namespace) -> tuple[Explained, Any, CCISettings]:
    """Explain's flags checked (every mistake one line, before the model loads), the model loaded and the
    image through the run's pass; returns what the pass made, the model and the CCI settings."""
    classes = parse_classes(args.classes)
    check_k("cci", args.k)  # before the model loads
    label = _given_label(args, classes)
    settings = CCISettings(k=args.k, layer=args.layer, seed=args.seed, target="label" if args.target else "pred")
    image = _load_image(args.image)
    mask_image = _load_image(args.mask, "mask", as_mask) if args.mask is not None else None
    templates = list(load_list("templates", args.templates, Path.cwd()))
    bank = resolve_bank(args.concepts) if getattr(args, "concepts", None) else None  # before the model loads
    options = explain_options(args, settings, mask_image is not None, bank)
    catalog = load_catalog(args.include_path)
    adapter = _load_adapter(args, settings, catalog)
    store = store_for(args.model, adapter, options.text_cache, args.precision)
    classifier = ClassifierCache(adapter, store).get(classes, templates, Reporter())
    setup = ExplainSetup(adapter, catalog, classes, templates, options, args.model, classifier)
    return explain_image(setup, image, mask_image, args.sample_id or args.image.name, label), adapter, settings


def _given_label(args: Namespace, classes: list[str]) -> int | None:
    """The label index from ``--target`` (explained as the label) or ``--label``; None: neither was given."""
    for flag, value in (("--target", args.target), ("--label", getattr(args, "label", None))):
        if value is not None and value not in classes:
            raise UsageError(f"{flag} {value!r} is not one of --classes")
    label = getattr(args, "label", None)
    if args.target is not None and label is not None and label != args.target:
        raise UsageError("--target explains the label (as --cci-target label in a run): give --label the same class")
    name = args.target if args.target is not None else label
    return None if name is None else classes.index(name)


# ---- printing ---------------------------------------------------------------------------------------------------
def cluster_rows(record: AttributionRecord) -> list[tuple[int, int, float, float | None]]:
    """(cluster, #patches, importance, drop), most important first; empty clusters are left out."""
    cci = record.cci
    rows = [
        (c, cci.assignments.count(c), cci.importance[c], None if cci.drop is None else cci.drop[c])
        for c in range(cci.k)
        if cci.assignments.count(c)
    ]
    return sorted(rows, key=lambda r: -r[2])


def top_classes(scores: Any, classes: list[str], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` best (class, score) pairs, best first."""
    values = [float(v) for v in scores]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]
    return [(classes[i], values[i]) for i in order]


def print_explained(out: Explained, adapter: Any, args: Namespace, settings: CCISettings) -> None:
    """The records of the image, as a run logs them: clusters, prediction, and with a mask the diagnosis under
    each configured rule and the region test."""
    console, classes = make_console(), out.classes
    attributed = out.record(AttributionRecord)
    if attributed is None:
        raise UsageError("the image was not attributed: " + "; ".join(out.notes))
    concepts = out.record(ConceptRecord)
    console.print(
        f"model: {markup(adapter.name)}   image: {markup(args.image)}   "
        f"predicted: [bold]{markup(classes[out.pred])}[/bold]   "
        f"explained: [bold]{markup(classes[attributed.cci.target])}[/bold]   s = {attributed.cci.s:.4f}"
    )
    grid = tuple(adapter.patch_grid)
    _print_clusters(console, attributed, settings, grid, None if concepts is None else concepts.top)
    top = top_classes(out.scores, classes)
    console.print(f"prediction: [bold]{markup(top[0][0])}[/bold]")
    console.print("top-5: " + ", ".join(f"{markup(name)} {score:.4f}" for name, score in top))
    diagnosis = out.record(DiagnosisRecord)
    if diagnosis is not None:
        _print_diagnosis(console, out, diagnosis, args.target is None and getattr(args, "label", None) is None)
        _print_region_test(console, classes, attributed)
    for note in out.notes:
        console.print(f"[yellow]note: {markup(note)}[/yellow]")


def _print_clusters(
    console: Any,
    record: AttributionRecord,
    settings: CCISettings,
    grid: tuple,
    named: list[list[tuple[str, float]]] | None = None,
) -> None:
    title = f"CCI clusters (K={settings.k}, layer {settings.layer}, {grid[0]}x{grid[1]} patches)"
    table = Table(title=title, title_justify="left")
    for col in ("cluster", "#patches", "importance", "drop"):
        table.add_column(col, justify="right")
    if named is not None:
        table.add_column("concept (score)", justify="left")
    for c, n, imp, drop in cluster_rows(record):
        cells = [str(c), str(n), f"{imp:+.4f}", "-" if drop is None else f"{drop:+.5f}"]
        if named is not None:
            cells.append(", ".join(f"{markup(name)} ({score:+.3f})" for name, score in named[c]) or "-")
        table.add_row(*cells)
    console.print(table)


def _print_diagnosis(console: Any, out: Explained, record: DiagnosisRecord, label_is_pred: bool) -> None:
    """Each ``--driver-rule`` as the run logs it (the first is the headline), then the verdict."""
    settings = _diagnosis_settings(out)
    area = "" if record.area is None else f" (object: {record.area:.3f} of the patch grid)"
    console.print(f"diagnosis, as a run logs it{area}:")
    limits = ", ".join(f"{name} {RULES[name].threshold(settings)}" for name in record.outcomes if name in RULES)
    console.print(f"fg at or above: {limits}; null: share of {settings.null_draws} permuted draws calling fg")
    for i, (name, o) in enumerate(record.outcomes.items()):
        tail = "   (headline, as in run)" if i == 0 else ""
        if o.score is None:
            console.print(f"  {markup(name)}: undetermined{tail}")
            continue
        null = "" if o.null_fg is None else f"   null: {o.null_fg:.2f}"
        console.print(f"  {markup(name)}: fg score {o.score:.3f}   driver: {o.driver}{null}{tail}")
    classes, head = out.classes, next(iter(record.outcomes.values()))
    if record.correct:
        why = " (no --label: the prediction stands in for it)" if label_is_pred else ""
        console.print(f"verdict: correct, label {markup(classes[out.label])}{why}")
    else:
        console.print(
            f"verdict: error, label {markup(classes[out.label])}, predicted {markup(classes[out.pred])}; "
            f"error type ({next(iter(record.outcomes))}): {head.error_type}"
        )


def _diagnosis_settings(out: Explained) -> DiagnosisSettings:
    for done in out.finished:
        settings = getattr(done.step, "settings", None)
        if isinstance(settings, DiagnosisSettings):
            return settings
    return DiagnosisSettings()


def _print_region_test(console: Any, classes: list[str], record: AttributionRecord) -> None:
    """The region test of the attribution record (the explained class with only one region kept)."""
    region = record.counterfactual
    if region is None:
        console.print("region test: not run (--no-counterfactual, or the attributor has none)")
        return
    console.print(f"region test (the explained class, one region kept): outcome {region.outcome or 'undefined'}")
    for where, s, pred in (
        ("foreground", region.s_fg_only, region.pred_fg_only),
        ("background", region.s_bg_only, region.pred_bg_only),
    ):
        if s is None or pred is None:
            console.print(f"  only the {where}: no patch in that region")
        else:
            console.print(f"  only the {where}: s = {s:.4f}, predicted {markup(_name(classes, pred))}")
    if region.additive_share is not None:
        console.print(f"  additive share (single-cluster drops over the regions' drops): {region.additive_share:.3f}")


def _name(classes: list[str], i: int) -> str:
    return classes[i] if 0 <= i < len(classes) else str(i)


def _caption(args: Namespace, out: Explained) -> Caption:
    """The overlay's caption; no ground truth in explain: it names the explained class and the image instead,
    and the driver per rule as the diagnosis record holds it."""
    classes = out.classes
    top = top_classes(out.scores, classes)
    diagnosis = out.record(DiagnosisRecord)
    rules = {} if diagnosis is None or not diagnosis.has_mask else diagnosis.outcomes
    attributed = out.record(AttributionRecord)
    explained = classes[attributed.cci.target] if attributed is not None else classes[out.pred]
    return Caption(
        pred=classes[out.pred],
        top5=[name for name, _ in top],
        rules={name: (o.score, o.driver) for name, o in rules.items()},
        notes=[f"explained: {explained}", f"file: {args.image.name}"],
    )


def _write_overlay(path: Path, adapter: Any, out: Explained, caption: Caption) -> None:
    """Drawn from what attribution left on the batch (full precision, as the maps step draws a run's)."""
    attributed = out.batch.carried(Attributed)
    assert attributed is not None, "attribution ran (print_explained checked its record)"
    grid = tuple(adapter.patch_grid)
    pixels = out.batch.pixels[0]
    size_hw = (int(pixels.shape[-2]), int(pixels.shape[-1]))
    mask = overlays.mask_in_input_frame(out.batch.samples, 0, adapter.preprocess, size_hw)
    result = attributed.result
    try:
        overlays.save_overlay(
            path,
            pixels,
            result.patch_importance()[0].view(grid),
            result.assignments[0].view(grid),
            mask,
            adapter.preprocess,
            caption=caption,
        )
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write the overlay {str(path)!r}: {exc}") from exc
