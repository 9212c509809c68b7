"""The shared evaluator: models x tasks -> zero-shot predictions -> (analysis pipeline) -> result files.

One model is loaded at a time and used for all its pending tasks; class-text embeddings are computed once
per (class names, templates) and reused across tasks, and across runs through the on-disk cache of
``text_cache.py``. Pairs whose result file exists are skipped before any weights load; finished batches go to
the pair's part file, so an interrupted pair resumes (``partfiles.py``). A failing pair is recorded and the run
goes on. Per pair, a :class:`~covar_harness.pipeline.contract.PairContext` carries everything the pair's steps need,
and the analysis steps (attribution, then diagnosis) run as a :class:`~covar_harness.pipeline.contract.Pipeline`
inside the one pass over the images.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness.catalog.taskconfig import CLASSIFICATION, TASK_KIND, task_kind
from covar_harness.common.console import markup, safe
from covar_harness.common.cost import Cost, ForwardMeter, reset_peak
from covar_harness.common.interrupt import INTERRUPT
from covar_harness.data.samples import open_task_data
from covar_harness.data.task_inputs import limit_samples, task_classnames, task_digest, task_templates
from covar_harness.models.adapter import adapter_family, implements
from covar_harness.models.specs import load_model, resolve_device
from covar_harness.pipeline.contract import Finished, PairContext, Pipeline, Step
from covar_harness.results import files as results
from covar_harness.run import batch_size, retrieval
from covar_harness.run.distributed import PairSync, RankFailed, SharedClassifiers, ShareDone, agree_token, detect_world
from covar_harness.run.distributed import provenance as dist_provenance
from covar_harness.run.options import PairOutcome, RunOptions
from covar_harness.run.pair import (
    PairRequest,
    TaskPair,
    add_step_summaries,
    classnames_ref,
    image_pass,
    label_embeddings,
    sample_rows,
    task_record,
    zero_shot_record,
)
from covar_harness.run.partfiles import pair_lock, part_path
from covar_harness.run.partfiles import remove as remove_part
from covar_harness.run.plan import plan_run
from covar_harness.run.progress import Reporter
from covar_harness.run.text_cache import ClassifierCache, store_for

if TYPE_CHECKING:
    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.catalog.taskconfig import TaskConfig
    from covar_harness.models.specs import ModelRef
    from covar_harness.run.plan import PlannedPair


log = logging.getLogger(__name__)


# ---- one model x task ----------------------------------------------------------------------------------
@dataclass
class ClassificationPair:
    """A classification pair opened for the one pass (``PAIR_KINDS``): its steps are the run's analysis pipeline
    (``RunOptions.analysis_steps``), its record the zero-shot metrics with every step's summary."""

    ctx: PairContext
    options: RunOptions
    skipped: str = "unreadable image(s)"
    explained: dict[str, str] = field(default_factory=dict)  # class i is class name i: nothing to add

    @classmethod
    def open(cls, req: PairRequest) -> ClassificationPair:
        """The pair's context: its samples (``--limit`` applied), class names, templates and class embeddings.
        In the pair's cost, opening the data is ``data``, the class embeddings ``zero-shot``.
        A class-mapped task (ImageNet-9's 1000-way protocol) scores over the map's classes, so its classifier is
        the one every task over those names and templates shares (ImageNet-1k's), built once per model."""
        cfg, catalog, options, cost = req.task, req.catalog, req.options, req.cost
        with cost.phase("data"):
            samples = limit_samples(open_task_data(cfg, catalog, options.data_dir), options.limit, options.seed)
            classnames, templates = task_classnames(cfg, samples), task_templates(cfg, samples)
        bad = [s.label for s in samples.samples if not 0 <= s.label < len(classnames)]
        if bad:
            raise ValueError(f"task {cfg.task!r}: label {bad[0]} outside the {len(classnames)} class names")
        cmap = samples.class_map
        with cost.phase("zero-shot"):
            W = req.classifiers.get(classnames if cmap is None else list(cmap.classnames), templates, req.reporter)
        labels = classnames if cmap is None else cmap.label_names(classnames)
        by_label = None if cmap is None else label_embeddings(W, cmap.members(len(classnames)))
        ctx = PairContext(
            req.adapter, cfg, samples, labels, templates, req.model_spec, catalog, options, req.reporter, W,
            class_map=cmap, label_classifier=by_label, cost=cost,
        )  # fmt: skip
        return cls(ctx, options)

    def steps(self) -> list[Step]:
        return self.options.analysis_steps()

    def record(self, rows: list, failures: list, finished: list[Finished]) -> dict[str, Any]:
        """Metrics and intervals (zero-shot, then each step's), config, notes, the task's part, the sample log."""
        ctx, cfg = self.ctx, self.ctx.task
        assert cfg is not None
        with ctx.cost.phase("zero-shot"):
            record, correct = zero_shot_record(ctx, rows)
        add_step_summaries(record, finished)
        record["task"] = task_record(ctx, len(rows), len(failures))
        record["config"].update(
            {
                "templates": ctx.templates,
                "classnames": classnames_ref(cfg),
                "task_digest": task_digest(cfg, ctx.classnames, ctx.templates),
            }
        )
        with ctx.cost.phase("write"):
            record["samples"] = sample_rows(rows, correct, ctx.samples, finished)
        record["failed_files"] = [ctx.samples.samples[i].id for i, _ in failures]
        return record


# How each task kind (``taskconfig.task_kind``: what the task's dataset format registered) opens its pairs.
PAIR_KINDS: dict[str, Callable[[PairRequest], TaskPair]] = {
    CLASSIFICATION: ClassificationPair.open,
    TASK_KIND: retrieval.RetrievalPair.open,
}


def open_task_pair(req: PairRequest) -> TaskPair:
    """The pair of the requested task's kind, opened (``PAIR_KINDS``): what ``evaluate_task`` and ``faithfulness``
    run their pass on. A kind no entry names fails with one line (it never silently runs as classification)."""
    cfg = req.task
    kind = task_kind(cfg, req.catalog)
    if kind not in PAIR_KINDS:
        raise ValueError(
            f"task {cfg.task!r}: format {cfg.dataset['format']!r} registered task_kind {kind!r}; "
            f"known: {', '.join(PAIR_KINDS)}"
        )
    return PAIR_KINDS[kind](req)


def evaluate_task(req: PairRequest, part: Path | None = None) -> dict[str, Any]:
    """Run one model on one task; return the result record's task-dependent parts and the sample log.
    The task's kind opens the pair (``PAIR_KINDS``), and every kind runs the one pass (``pair.image_pass``).
    ``part``: the pair's part file (resumed from, appended to every ``options.checkpoint_every`` batches);
    the request's ``cost`` gets the pair's phase timings and forward passes (common/cost.py)."""

    pair = open_task_pair(req)
    cfg, reporter = req.task, req.reporter
    pipeline = Pipeline(pair.steps())
    pipeline.start(pair.ctx)
    rows, failures = image_pass(pair.ctx, pipeline, part)
    if failures:
        first = failures[0]
        reporter.say(
            f"[yellow]{markup(cfg.task)}: skipped {len(failures)} {pair.skipped}; first: "
            f"{markup(pair.ctx.samples.samples[first[0]].id)} ({markup(first[1])})[/yellow]"
        )
    return pair.record(rows, failures, pipeline.finish())


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

    ``plan`` comes from :func:`covar_harness.run.plan.plan_run` (the CLI makes it before anything expensive);
    without it, it is made here, with the same checks.
    """

    reporter = reporter or Reporter()
    plan = plan if plan is not None else plan_run(models, tasks, catalog, options)
    if options.world is None:  # under torchrun: the ranks agree on this run's token before any pair
        options = replace(options, world=agree_token(detect_world(timeout=options.dist_timeout)))
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
            for p in pending:
                if p.reason:  # an existing result redone (outputs newly asked for): said once, up front
                    reporter.say(f"{markup(ref.spec)} x {markup(p.cfg.task)}: {markup(p.reason)}")
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
    load_seconds: float = 0.0  # loading the model (and probing ``--batch-size auto``): shared by its pairs
    n_pairs: int = 1  # pairs run on this load
    meter: ForwardMeter | None = None  # counts the image rows the adapter forwards, per phase of the pair


def _run_model(ref, pending, catalog, options, reporter) -> list[PairOutcome]:
    """Load one model, run all its pending pairs; a model that fails to load fails its pairs with one message."""

    options = options.for_model(ref)
    device = options.world.device(resolve_device(options.device))
    handle = reporter.task(f"loading {markup(ref.spec)}", None)
    loading = time.perf_counter()
    try:
        adapter = load_model(
            ref.target if ref.args else ref.spec, device, options.precision, options.cache_dir, catalog
        )
    except Exception as exc:
        INTERRUPT.check()
        advice = safe(getattr(exc, "advice", ""))
        # an error with advice also carries its message without it: the advice is printed once per run instead
        msg = f"{type(exc).__name__}: {safe(exc.headline)}" if advice and hasattr(exc, "headline") else error_line(exc)
        return [
            _report(reporter, PairOutcome(ref.spec, p.cfg.task, "failed", p.path, error=msg, advice=advice))
            for p in pending
        ]
    finally:
        reporter.done(handle)
    options = _with_batch_size(options, adapter, device)
    loaded = time.perf_counter() - loading
    meter = ForwardMeter(adapter, implements)
    store = store_for(ref.spec, adapter, options.text_cache, options.precision)
    world = options.world
    classifiers = SharedClassifiers(adapter, store, world) if world.active else ClassifierCache(adapter, store)
    model = _ModelRun(ref, adapter, device, catalog, options, classifiers, reporter, loaded, len(pending), meter)
    return [_report(reporter, _run_pair(model, p.cfg, p.path, fresh=not p.existed)) for p in pending]


def _with_batch_size(options: RunOptions, adapter: Any, device: Any) -> RunOptions:
    """``--batch-size auto`` resolved for this model (batch_size.py), recorded in its results; else as given."""

    if options.batch_size != batch_size.AUTO:
        return options
    ks = options.cluster_counts()
    size, record = batch_size.resolve(adapter, device, max(ks) if ks else None)
    return replace(options, batch_size=size, batch_size_auto=record)


def error_line(exc: BaseException) -> str:
    """An exception as one line of plain text (control characters removed: messages may quote untrusted input)."""
    text = safe(str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _run_pair(model: _ModelRun, cfg: TaskConfig, path: Path, fresh: bool = False) -> PairOutcome:
    """Everything one pair does, writing included, inside one handler: a failing pair never stops the run.

    The pair runs under its lock (``partfiles.pair_lock``): a pair another process is evaluating fails here with
    one line, and a pair planned without a result file (``fresh``) whose file another run wrote meanwhile is
    skipped, not redone."""
    spec, options = model.ref.spec, model.options
    started, part = results.now(), part_path(path)
    sync: PairSync | None = (
        PairSync.of(options.world, part) if options.world is not None and options.world.active else None
    )
    if isinstance(model.classifiers, SharedClassifiers):
        model.classifiers.sync = sync
    cost = _start_cost(model)
    try:
        with pair_lock(part if sync is None else sync.part()):
            if fresh and sync is None and path.exists():
                return PairOutcome(spec, cfg.task, "skipped", path, error="another run finished it meanwhile")
            if sync is not None:
                sync.begin(options.checkpoint_every)
            req = PairRequest(model.adapter, cfg, model.catalog, options, model.classifiers, model.reporter, spec, cost)
            record = evaluate_task(req, part)
            if options.log_samples:
                with cost.phase("write"):
                    results.write_jsonl(results.samples_path(path), record["samples"])
            out = _result_object(model, record, started, sync)
            out["provenance"]["cost"] = _cost_record(model, cost, record)
            results.write_json(path, out)  # last: its existence marks the pair done
            if sync is not None:
                sync.cleanup()
            else:
                remove_part(part)
    except ShareDone as done:  # a rank other than 0: rank 0 merged the shares and wrote the result
        return _done(spec, cfg, path, done.result)
    except Exception as exc:
        INTERRUPT.check()
        log.debug("pair %s x %s failed:\n%s", spec, cfg.task, traceback.format_exc())
        error = error_line(exc)
        if sync is not None:  # the same one line on every rank, naming the rank that failed
            error = str(exc) if isinstance(exc, RankFailed) else f"rank {sync.world.rank}: {error}"
            sync.fail(error)
        return PairOutcome(spec, cfg.task, "failed", path, error=error)
    return _done(spec, cfg, path, out)


def _start_cost(model: _ModelRun) -> Cost:
    """A pair's cost record, starting with its model's load time; the adapter's forwards count into it."""
    cost = Cost()
    cost.add("load", model.load_seconds)
    if model.meter is not None:
        model.meter.cost = cost
    reset_peak(model.device)
    return cost


def _cost_record(model: _ModelRun, cost: Cost, record: dict[str, Any]) -> dict[str, Any]:
    """``provenance.cost`` (docs/design.md section 6): the time of writing the result file itself is not in it."""
    if model.meter is not None:
        model.meter.cost = None
    extra: dict[str, Any] = {"load_shared_by": model.n_pairs, "batch_size": model.options.batch_size}
    if model.meter is not None and model.meter.uncounted:  # e.g. attention_trace when it is a property
        extra["forward_passes_uncounted"] = list(model.meter.uncounted)
    return cost.record(int(record["task"].get("n_samples") or 0), model.device, extra)


def _done(spec: str, cfg: TaskConfig, path: Path, result: dict[str, Any]) -> PairOutcome:
    """A finished pair's outcome, from its result object (this rank's, or the one rank 0 wrote)."""
    task = result.get("task", {})
    return PairOutcome(
        spec,
        cfg.task,
        "done",
        path,
        result.get("metrics", {}),
        n_failed=task.get("n_failed", 0),
        headline=task.get("headline") or "acc1",
    )


def _result_object(
    model: _ModelRun, record: dict[str, Any], started: str, sync: PairSync | None = None
) -> dict[str, Any]:
    """The result file's content (docs/design.md section 6): model, task, metrics with intervals, settings,
    provenance (with ``sync``: the ranks of a distributed run, ``distributed.provenance``)."""
    ref, options = model.ref, model.options
    return {
        "schema_version": results.SCHEMA_VERSION,
        "model": {
            "spec": ref.spec,
            "name": getattr(model.adapter, "name", ref.spec),
            "family": adapter_family(model.adapter, ref.family),
            "target": ref.target,
            **({"args": dict(options.model_args)} if options.model_args else {}),
        },
        "task": record["task"],
        "metrics": record["metrics"],
        "intervals": record["intervals"],
        "config": {
            "batch_size": options.batch_size,
            **({"batch_size_auto": options.batch_size_auto} if options.batch_size_auto else {}),
            "precision": options.precision,
            "seed": options.seed,
            "limit": options.limit,
            **record["config"],
            "sample_log_version": results.SAMPLE_LOG_VERSION,  # of the log written with --log-samples
            "run_settings": options.result_settings(),
        },
        "notes": record["notes"],
        "failed_files": record["failed_files"][:100],
        "provenance": results.provenance(model.device, started, None if sync is None else dist_provenance(sync)),
    }
