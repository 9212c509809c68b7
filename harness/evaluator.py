"""The shared evaluator: models x tasks -> zero-shot predictions -> (analysis pipeline) -> result files.

One model is loaded at a time and used for all its pending tasks; class-text embeddings are computed once
per (class names, templates) and reused across tasks, and across runs through the on-disk cache of
``text_cache.py``. Pairs whose result file exists are skipped before any weights load; finished batches go to
the pair's part file, so an interrupted pair resumes (``partfiles.py``). A failing pair is recorded and the run
goes on. Per pair, a :class:`~covar_harness.pipeline.PairContext` carries everything the pair's steps need,
and the analysis steps (attribution, then diagnosis) run as a :class:`~covar_harness.pipeline.Pipeline`
inside the one pass over the images.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness import results
from covar_harness.adapter import adapter_family
from covar_harness.batches import default_workers, iterate_batches
from covar_harness.console import markup, safe
from covar_harness.data import SampleSet, open_task_data
from covar_harness.interrupt import INTERRUPT
from covar_harness.partfiles import Checkpointer, part_path
from covar_harness.partfiles import remove as remove_part
from covar_harness.pipeline import Batch, BatchStep, Finished, PairContext, Pipeline, as_step
from covar_harness.progress import LineReporter, Reporter
from covar_harness.resources import load_list
from covar_harness.text_cache import TEXT_BATCH, ClassifierCache, build_classifier, store_for

if TYPE_CHECKING:
    import numpy as np
    import torch

    from covar_harness.adapter import ModelAdapter
    from covar_harness.models import ModelRef
    from covar_harness.plan import PlannedPair
    from covar_harness.plugin_manager import Catalog
    from covar_harness.taskconfig import TaskConfig

__all__ = [
    "INTERRUPT",
    "Batch",
    "BatchStep",
    "ClassifierCache",
    "LineReporter",
    "PairOutcome",
    "Reporter",
    "RunOptions",
    "TEXT_BATCH",
    "build_classifier",
    "evaluate_task",
    "run",
]  # Batch, BatchStep, reporters: re-exported

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    output_dir: Path = Path("results")
    data_dir: Path | None = None
    batch_size: int = 64
    workers: int | None = None  # None: min(4, cpu count)
    device: str = "auto"
    precision: str = "fp32"
    limit: int | None = None
    seed: int = 0
    log_samples: bool = False
    overwrite: bool = False
    cache_dir: str | None = None
    steps: list[Any] = field(default_factory=list)  # analysis steps (attribution), see pipeline.BatchStep
    diagnosis: Any = None  # covar_harness.diagnosis.DiagnosisSettings; None: no fg/bg diagnosis
    segmenter: str = "auto"  # where foreground masks come from: auto | dataset | groundedsam | plugin | none
    segmenter_settings: dict = field(default_factory=dict)
    shard: tuple[int, int] | None = None  # (i, n): only the i-th of n shards of the pairs (plan.shard_pairs)
    text_cache: Path | None = None  # persistent class-text embeddings (text_cache.py); None: in memory only
    checkpoint_every: int = 0  # batches between appends to the pair's part file (partfiles.py); 0: no part file

    def result_settings(self) -> dict[str, Any]:
        """Every setting that can change a number in a result file: recorded in it as ``config.run_settings``
        and compared before an existing file is reused (resume)."""
        steps = {step.name: as_step(step).run_settings() for step in self.steps}
        diagnosis = None if self.diagnosis is None else self.diagnosis_step().run_settings()
        settings = {
            "precision": self.precision,
            "seed": self.seed,
            "limit": self.limit,
            "steps": steps,
            "diagnosis": diagnosis,
        }
        return json.loads(json.dumps(settings, default=str))  # as it reads back from the file (lists, not tuples)

    def diagnosis_step(self) -> Any:
        """The fg/bg diagnosis step (``diagnosis.DiagnosisStep``), or None without ``diagnosis`` settings."""
        if self.diagnosis is None:
            return None
        from covar_harness.diagnosis import DiagnosisStep

        return DiagnosisStep(self.diagnosis, self.segmenter, self.segmenter_settings)

    def analysis_steps(self) -> list[Any]:
        """The pipeline of every pair: the analysis steps, then the diagnosis that reads their records."""
        diagnosis = self.diagnosis_step()
        return [*self.steps, *([diagnosis] if diagnosis is not None else [])]


@dataclass
class PairOutcome:
    model: str
    task: str
    status: str  # done | skipped | failed
    path: Path
    metrics: dict = field(default_factory=dict)
    error: str = ""
    n_failed: int = 0
    advice: str = ""  # what to do about the error, the same for every pair it hits (print once)


# ---- one model x task ----------------------------------------------------------------------------------
def task_classnames(cfg: TaskConfig, samples: SampleSet) -> list[str]:
    base = cfg.source.parent if cfg.source else None
    names = load_list("classnames", cfg.classnames, base) if cfg.classnames is not None else samples.classnames
    if not names:
        raise ValueError(f"task {cfg.task!r} names no classes and its dataset provides none")
    return list(names)


def task_templates(cfg: TaskConfig) -> list[str]:
    base = cfg.source.parent if cfg.source else None
    return list(load_list("templates", cfg.templates, base))


def limit_samples(samples: SampleSet, limit: int | None, seed: int) -> SampleSet:
    """A seeded random subset (kept in dataset order), so ``--limit`` covers every class, reproducibly."""
    if not limit or limit >= len(samples):
        return samples
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).choice(len(samples), size=limit, replace=False))
    return samples.subset(keep.tolist())


def open_pair(
    adapter: ModelAdapter,
    cfg: TaskConfig,
    catalog: Catalog,
    options: RunOptions,
    classifiers: ClassifierCache,
    reporter: Reporter,
    model_spec: str | None = None,
) -> PairContext:
    """The pair's context: its samples (``--limit`` applied), class names, templates and class embeddings."""
    samples = limit_samples(open_task_data(cfg, catalog, options.data_dir), options.limit, options.seed)
    classnames, templates = task_classnames(cfg, samples), task_templates(cfg)
    bad = [s.label for s in samples.samples if not 0 <= s.label < len(classnames)]
    if bad:
        raise ValueError(f"task {cfg.task!r}: label {bad[0]} outside the {len(classnames)} class names")
    W = classifiers.get(classnames, templates, reporter)
    return PairContext(adapter, cfg, samples, classnames, templates, model_spec, catalog, options, reporter, W)


def evaluate_task(
    adapter: ModelAdapter,
    cfg: TaskConfig,
    catalog: Catalog,
    options: RunOptions,
    classifiers: ClassifierCache,
    reporter: Reporter,
    model_spec: str | None = None,
    part: Path | None = None,
) -> dict[str, Any]:
    """Run one model on one task; return the result record's task-dependent parts and the sample log.
    ``part``: the pair's part file (resumed from, appended to every ``options.checkpoint_every`` batches)."""
    ctx = open_pair(adapter, cfg, catalog, options, classifiers, reporter, model_spec)
    pipeline = Pipeline(options.analysis_steps())
    pipeline.start(ctx)
    rows, failures = _batch_loop(ctx, pipeline, part)
    if failures:
        first = failures[0]
        reporter.say(
            f"[yellow]{markup(cfg.task)}: skipped {len(failures)} unreadable image(s); first: "
            f"{markup(ctx.samples.samples[first[0]].id)} ({markup(first[1])})[/yellow]"
        )
    record, correct = _zero_shot_record(ctx, rows)
    finished = pipeline.finish()
    for done in finished:
        record["metrics"].update(done.summary.metrics)
        record["intervals"].update(done.summary.intervals)
        if done.summary.config is not None:
            record["config"][done.step.name] = done.summary.config
        record["notes"] += done.summary.notes
    record["task"] = _task_record(ctx, len(rows), len(failures))
    record["config"].update({"templates": ctx.templates, "classnames": _classnames_ref(cfg)})
    record["samples"] = _sample_rows(rows, correct, ctx.samples, finished)
    record["failed_files"] = [ctx.samples.samples[i].id for i, _ in failures]
    return record


def _batch_loop(ctx: PairContext, pipeline: Pipeline, part: Path | None = None) -> tuple[list, list]:
    """The one pass over the images: zero-shot top-k per sample, then the pipeline's steps on the same batch;
    finished batches go to the pair's part file (``part``) and a rerun goes on after them (partfiles.py)."""
    import torch.nn.functional as F

    options, samples, reporter = ctx.options, ctx.samples, ctx.reporter
    assert options is not None and reporter is not None and ctx.classifier is not None and ctx.task is not None
    k = min(5, len(ctx.classnames))
    ck = Checkpointer.open(part, options.checkpoint_every, ctx, pipeline)
    rows, failures = ck.rows, ck.failures
    W_dev = None
    workers = default_workers() if options.workers is None else options.workers
    handle = reporter.task(markup(ctx.task.task), len(samples))
    reporter.advance(handle, ck.start)
    batches = iterate_batches(samples, ctx.adapter.preprocess, options.batch_size, workers, ck.start)
    try:
        for indices, pixels, failed in batches:
            INTERRUPT.check()
            failures += failed
            new: list = []
            if pixels is not None:
                emb = F.normalize(ctx.adapter.encode_images(pixels).float(), dim=-1)
                if W_dev is None:
                    W_dev = ctx.classifier.to(emb.device)
                logits = emb @ W_dev
                top = logits.topk(k, dim=-1).indices.cpu().numpy()
                new = [(i, top[r]) for r, i in enumerate(indices)]
                rows += new
                if pipeline.active:
                    pipeline.process(_batch(ctx, indices, pixels, emb, W_dev, logits, top))
            ck.done(new, failed, len(indices) + len(failed))
            reporter.advance(handle, len(indices) + len(failed))
    finally:
        ck.flush()  # also on Ctrl-C or a failing batch: the batches finished so far are kept
    reporter.done(handle)
    return rows, failures


def _batch(
    ctx: PairContext,
    indices: list[int],
    pixels: torch.Tensor,
    emb: torch.Tensor,
    W: torch.Tensor,
    logits: torch.Tensor,
    top: np.ndarray,
) -> Batch:
    """What the steps see of one batch, with the foreground masks of its samples when the pair has them."""
    import torch

    labels = torch.tensor([ctx.samples.samples[i].label for i in indices])
    fg = ctx.masks.for_batch(indices) if ctx.masks is not None else None
    return Batch(indices, pixels, emb, W, logits, labels, ctx.samples, fg, top)


def _zero_shot_record(ctx: PairContext, rows: list) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics and the acc1 interval of the zero-shot pass; also which samples were correct."""
    import numpy as np

    from covar_harness.group_metrics import add_group_metrics
    from covar_harness.metrics import (
        bootstrap_interval,
        classification_metrics,
        per_class_recall_interval,
        source_clusters,
    )

    k = min(5, len(ctx.classnames))
    idx = np.array([i for i, _ in rows], dtype=np.int64)
    topk = np.stack([t for _, t in rows]) if rows else np.zeros((0, k), dtype=np.int64)
    labels = np.array([ctx.samples.samples[i].label for i in idx], dtype=np.int64)
    metrics = classification_metrics(labels, topk, len(ctx.classnames))
    correct = (topk[:, 0] == labels) if len(rows) else np.zeros(0, bool)
    intervals = {}
    if len(rows):  # resampling source objects where every sample names one (COVAR), else samples
        seed = ctx.options.seed if ctx.options is not None else 0
        clusters = source_clusters([ctx.samples.samples[i].meta.get("source_id") for i in idx])
        intervals["acc1"] = list(bootstrap_interval(correct.astype(float), seed=seed, clusters=clusters))
        # class-balanced accuracy: resampled within each class (every class in every replicate), by source too
        recall = per_class_recall_interval(labels, correct, seed=seed, clusters=clusters)
        intervals["mean_per_class_recall"] = list(recall or ())
    record: dict[str, Any] = {"metrics": metrics, "intervals": intervals, "config": {}, "notes": []}
    groups = [ctx.samples.samples[i].meta.get("group") for i in idx]
    add_group_metrics(record, correct.tolist(), groups, seed=ctx.options.seed if ctx.options is not None else 0)
    return record, correct


def _task_record(ctx: PairContext, n_samples: int, n_failed: int) -> dict[str, Any]:
    cfg, samples = ctx.task, ctx.samples
    assert cfg is not None
    out = {
        "name": cfg.task,
        "version": cfg.version,
        "n_samples": int(n_samples),
        "n_failed": n_failed,
        "n_classes": len(ctx.classnames),
        "data_fingerprint": samples.fingerprint(),
        "headline": cfg.headline,
        "tags": list(cfg.tags),
        "dataset": samples.description,
    }
    if getattr(samples, "label_mapping", None):
        out["label_mapping"] = samples.label_mapping
    return out


def _sample_rows(rows, correct, samples: SampleSet, finished: list[Finished]) -> list[dict]:
    """The per-sample log (docs/design.md section 6): prediction, top-5, the dataset's metadata, then the fields of
    each step's record, in pipeline order (a withdrawn step's records are left out)."""
    logged = [{r.index: r for r in done.records} for done in finished if done.summary.log_records]
    out = []
    for (i, top), ok in zip(rows, correct):
        sample = samples.samples[i]
        row = {
            "index": int(i),
            "file": sample.id,
            "label": sample.label,
            "pred": int(top[0]),
            "correct": bool(ok),
            "top5": [int(x) for x in top],
        }
        for key, value in sample.meta.items():
            row.setdefault(key, value)
        for by_index in logged:
            record = by_index.get(int(i))
            if record is not None:
                row.update(record.log_fields())
        out.append(row)
    return out


def _classnames_ref(cfg: TaskConfig) -> Any:
    return cfg.classnames if isinstance(cfg.classnames, str) or cfg.classnames is None else "inline"


# ---- the run -------------------------------------------------------------------------------------------
def run(
    models: list[ModelRef],
    tasks: list[TaskConfig],
    catalog: Catalog,
    options: RunOptions,
    reporter: Reporter | None = None,
    plan: list[PlannedPair] | None = None,
) -> list[PairOutcome]:
    """Evaluate every planned pair; a failing pair is recorded and the run goes on.

    ``plan`` comes from :func:`covar_harness.plan.plan_run` (the CLI makes it before anything expensive);
    without it, it is made here, with the same checks.
    """
    from covar_harness.plan import plan_run

    reporter = reporter or Reporter()
    plan = plan if plan is not None else plan_run(models, tasks, catalog, options)
    outcomes: list[PairOutcome] = []
    with INTERRUPT.installed():
        for ref in _unique_refs(plan):
            mine = [p for p in plan if p.ref is ref]
            for p in mine:
                if p.status != "run":
                    outcomes.append(
                        _report(reporter, PairOutcome(ref.spec, p.cfg.task, "skipped", p.path, error=p.reason))
                    )
            pending = [p for p in mine if p.status == "run"]
            if pending:
                outcomes += _run_model(ref, pending, catalog, options, reporter)
        INTERRUPT.check()
    return outcomes


def _unique_refs(plan: list[PlannedPair]) -> list[ModelRef]:
    refs: list = []
    for p in plan:
        if not any(p.ref is r for r in refs):
            refs.append(p.ref)
    return refs


def _report(reporter: Reporter, outcome: PairOutcome) -> PairOutcome:
    reporter.pair_done(outcome)
    return outcome


@dataclass
class _ModelRun:
    """One loaded model and what its pairs share."""

    ref: ModelRef
    adapter: Any
    device: Any
    catalog: Catalog
    options: RunOptions
    classifiers: ClassifierCache
    reporter: Reporter


def _run_model(ref, pending, catalog, options, reporter) -> list[PairOutcome]:
    """Load one model, run all its pending pairs; a model that fails to load fails its pairs with one message."""
    from covar_harness.models import load_model, resolve_device

    device = resolve_device(options.device)
    handle = reporter.task(f"loading {markup(ref.spec)}", None)
    try:
        adapter = load_model(ref.spec, device, options.precision, options.cache_dir, catalog)
    except Exception as exc:
        INTERRUPT.check()
        msg, advice = one_line(exc), safe(getattr(exc, "advice", ""))
        return [
            _report(reporter, PairOutcome(ref.spec, p.cfg.task, "failed", p.path, error=msg, advice=advice))
            for p in pending
        ]
    finally:
        reporter.done(handle)
    store = store_for(ref.spec, adapter, options.text_cache, options.precision)
    model = _ModelRun(ref, adapter, device, catalog, options, ClassifierCache(adapter, store), reporter)
    return [_report(reporter, _run_pair(model, p.cfg, p.path)) for p in pending]


def one_line(exc: BaseException) -> str:
    """An exception as one line of plain text (control characters removed: messages may quote untrusted input)."""
    text = safe(str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _run_pair(model: _ModelRun, cfg: TaskConfig, path: Path) -> PairOutcome:
    """Everything one pair does, writing included, inside one handler: a failing pair never stops the run."""
    spec, options = model.ref.spec, model.options
    started = results.now()
    try:
        part = part_path(path)
        record = evaluate_task(
            model.adapter, cfg, model.catalog, options, model.classifiers, model.reporter, spec, part
        )
        out = _result_object(model, record, started)
        if options.log_samples:
            results.write_jsonl(results.samples_path(path), record["samples"])
        results.write_json(path, out)  # last: its existence marks the pair done
        remove_part(part)
    except Exception as exc:
        INTERRUPT.check()
        log.debug("pair %s x %s failed:\n%s", spec, cfg.task, traceback.format_exc())
        return PairOutcome(spec, cfg.task, "failed", path, error=one_line(exc))
    return PairOutcome(spec, cfg.task, "done", path, out["metrics"], n_failed=len(record["failed_files"]))


def _result_object(model: _ModelRun, record: dict[str, Any], started: str) -> dict[str, Any]:
    """The result file's content (docs/design.md section 6): model, task, metrics with intervals, settings,
    provenance."""
    ref, options = model.ref, model.options
    return {
        "schema_version": results.SCHEMA_VERSION,
        "model": {
            "spec": ref.spec,
            "name": getattr(model.adapter, "name", ref.spec),
            "family": adapter_family(model.adapter, ref.family),
            "target": ref.target,
        },
        "task": record["task"],
        "metrics": record["metrics"],
        "intervals": record["intervals"],
        "config": {
            "batch_size": options.batch_size,
            "precision": options.precision,
            "seed": options.seed,
            "limit": options.limit,
            **record["config"],
            "run_settings": options.result_settings(),
        },
        "notes": record["notes"],
        "failed_files": record["failed_files"][:100],
        "provenance": results.provenance(model.device, started),
    }
