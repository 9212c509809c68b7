"""The shared evaluator: models x tasks -> zero-shot predictions -> (analysis steps) -> result files.

One model is loaded at a time and used for all its pending tasks; class-text embeddings are computed once
per (class names, templates) and reused across tasks. Pairs whose result file exists are skipped before
any weights load. A failing pair is recorded and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from covar_harness import results
from covar_harness.console import clip, markup, safe
from covar_harness.data import SampleSet, open_task_data
from covar_harness.plugin_manager import call_with_accepted
from covar_harness.resources import format_prompt, load_list

if TYPE_CHECKING:
    import torch

    from covar_harness.adapter import ModelAdapter
    from covar_harness.models import ModelRef
    from covar_harness.plan import PlannedPair
    from covar_harness.plugin_manager import Catalog
    from covar_harness.taskconfig import TaskConfig

log = logging.getLogger(__name__)
TEXT_BATCH = 256


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
    steps: list[Any] = field(default_factory=list)  # analysis steps (attribution), see BatchStep
    diagnosis: Any = None  # covar_harness.diagnosis.DiagnosisSettings; None: no fg/bg diagnosis
    segmenter: str = "auto"  # where foreground masks come from: auto | dataset | groundedsam | plugin | none
    segmenter_settings: dict = field(default_factory=dict)

    def result_settings(self) -> dict[str, Any]:
        """Every setting that can change a number in a result file: recorded in it as ``config.run_settings``
        and compared before an existing file is reused (resume)."""
        steps = {step.name: {"method": getattr(step, "method", step.name),
                             "only_with_masks": getattr(step, "only_with_masks", False),
                             **_as_dict(getattr(step, "settings", None))} for step in self.steps}
        diagnosis = None if self.diagnosis is None else {
            **self.diagnosis.as_config(), "segmenter": self.segmenter, "segmenter_settings": self.segmenter_settings}
        settings = {"precision": self.precision, "seed": self.seed, "limit": self.limit, "steps": steps,
                    "diagnosis": diagnosis}
        return json.loads(json.dumps(settings, default=str))  # as it reads back from the file (lists, not tuples)


def _as_dict(settings: Any) -> dict[str, Any]:
    if is_dataclass(settings) and not isinstance(settings, type):
        return asdict(settings)
    return dict(settings) if isinstance(settings, dict) else {}


@dataclass
class Batch:
    """What the zero-shot pass hands to analysis steps for one batch of images."""

    indices: list[int]  # positions in the SampleSet
    pixels: "torch.Tensor"  # (B, 3, H, W), on CPU, as preprocessed
    image_emb: "torch.Tensor"  # (B, D), L2-normalised
    classifier: "torch.Tensor"  # (D, C) class embeddings, L2-normalised
    logits: "torch.Tensor"  # (B, C)
    labels: "torch.Tensor"  # (B,)
    samples: SampleSet
    fg: list | None = None  # per sample: (rows*cols,) foreground fraction per patch, or None (no mask)


class BatchStep(Protocol):
    """An analysis run inside the batch loop (CCI, diagnosis). Data flows forward: records, then a summary."""

    name: str

    def start(self, adapter: "ModelAdapter", task: "TaskConfig", samples: SampleSet) -> None: ...

    def process(self, batch: Batch) -> list[dict]: ...

    def finish(self, records: list[dict]) -> dict: ...  # {"metrics": {...}, "config": {...}, "notes": [...]}


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


class Reporter:
    """Progress and messages; the CLI gives it a rich Progress, tests and the API a silent one."""

    def __init__(self, progress=None, console=None):
        self.progress, self.console = progress, console

    def task(self, description: str, total: int | None):
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total)

    def advance(self, handle, n: int = 1) -> None:
        if handle is not None:
            self.progress.advance(handle, n)

    def done(self, handle) -> None:
        if handle is not None:
            self.progress.remove_task(handle)

    def say(self, message: str) -> None:
        """``message`` is rich markup: interpolate untrusted values with ``console.markup``."""
        if self.console is not None:
            self.console.print(message)
        else:
            log.info(message)

    def pair_done(self, outcome: "PairOutcome") -> None:
        """Called once per pair (done, skipped or failed); the summary table prints them all at the end."""


class LineReporter(Reporter):
    """Progress as plain lines, for output that is not a terminal (CI logs, nohup): one line per pair, and one
    every ``every_s`` seconds of a long pair, with counts and elapsed time, so a log never goes quiet for long."""

    def __init__(self, stream=None, every_s: float = 30.0, total_pairs: int | None = None):
        super().__init__()
        self.stream, self.every_s, self.total_pairs = stream or sys.stderr, every_s, total_pairs
        self.started, self.n_pairs = time.monotonic(), 0
        self._bars: dict[int, list] = {}

    def _line(self, text: str) -> None:
        print(f"[{_clock(time.monotonic() - self.started)}] {safe(text)}", file=self.stream, flush=True)

    def task(self, description: str, total: int | None):
        from rich.text import Text

        handle = len(self._bars) + 1
        self._bars[handle] = [Text.from_markup(description).plain, total, 0, time.monotonic(), time.monotonic()]
        return handle

    def advance(self, handle, n: int = 1) -> None:
        bar = self._bars.get(handle)
        if bar is None:
            return
        bar[2] += n
        if time.monotonic() - bar[4] >= self.every_s:
            bar[4] = time.monotonic()
            of = f"/{bar[1]}" if bar[1] else ""
            self._line(f"{bar[0]}: {bar[2]}{of} in {_clock(bar[4] - bar[3])}")

    def done(self, handle) -> None:
        self._bars.pop(handle, None)

    def say(self, message: str) -> None:
        from rich.text import Text

        self._line(Text.from_markup(message).plain)

    def pair_done(self, outcome: "PairOutcome") -> None:
        self.n_pairs += 1
        of = f"/{self.total_pairs}" if self.total_pairs else ""
        acc = outcome.metrics.get("acc1")
        what = {"done": f"done, acc1 {100 * acc:.1f}%" if isinstance(acc, (int, float)) else "done",
                "skipped": f"skipped ({outcome.error})" if outcome.error else "skipped",
                "failed": f"failed: {clip(outcome.error, 100)}"}[outcome.status]  # in full in the summary
        self._line(f"pair {self.n_pairs}{of}: {outcome.model} x {outcome.task}: {what}")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


# ---- text side -----------------------------------------------------------------------------------------
class ClassifierCache:
    """Class embeddings per (class names, templates), for the model currently loaded."""

    def __init__(self, adapter: "ModelAdapter"):
        self.adapter = adapter
        self._cache: dict[tuple, "torch.Tensor"] = {}

    def get(self, classnames: list[str], templates: list[str], reporter: Reporter) -> "torch.Tensor":
        key = (tuple(classnames), tuple(templates))
        if key not in self._cache:
            self._cache[key] = build_classifier(self.adapter, classnames, templates, reporter)
        return self._cache[key]


def build_classifier(adapter, classnames: list[str], templates: list[str], reporter: Reporter | None = None):
    """(D, C): per class, the mean of the L2-normalised template embeddings, renormalised (CLIP's recipe)."""
    import torch
    import torch.nn.functional as F

    prompts = [format_prompt(t, c) for c in classnames for t in templates]
    handle = reporter.task("encoding class prompts", len(prompts)) if reporter else None
    chunks = []
    for start in range(0, len(prompts), TEXT_BATCH):
        part = prompts[start : start + TEXT_BATCH]
        chunks.append(F.normalize(adapter.encode_texts(part).float().cpu(), dim=-1))
        if reporter:
            reporter.advance(handle, len(part))
    if reporter:
        reporter.done(handle)
    emb = torch.cat(chunks).view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1).T.contiguous()


# ---- image side ----------------------------------------------------------------------------------------
class _PixelDataset:
    """Map-style dataset: (index, pixels or None, error). Never raises on a bad image."""

    def __init__(self, samples: SampleSet, preprocess: Callable):
        self.samples, self.preprocess = samples, preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(self.samples.open_image(i)), None
        except Exception as exc:  # corrupt, truncated, missing: skipped and counted by the evaluator
            return i, None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _collate(items):
    import torch

    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None]
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], pixels, failed


def iterate_batches(samples: SampleSet, preprocess: Callable, batch_size: int, workers: int):
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _PixelDataset(samples, preprocess), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=_collate, persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_ignore_sigint if workers > 0 else None,
    )
    with _sigint_deferred():  # workers fork here: a Ctrl-C now would land in an at-fork hook and be swallowed
        batches = iter(loader)
    yield from batches


@contextmanager
def _sigint_deferred():
    """Hold SIGINT back (it is delivered, to the main process, right after); forked workers inherit the block."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


# ---- one model x task ----------------------------------------------------------------------------------
def task_classnames(cfg: "TaskConfig", samples: SampleSet) -> list[str]:
    base = cfg.source.parent if cfg.source else None
    names = load_list("classnames", cfg.classnames, base) if cfg.classnames is not None else samples.classnames
    if not names:
        raise ValueError(f"task {cfg.task!r} names no classes and its dataset provides none")
    return list(names)


def task_templates(cfg: "TaskConfig") -> list[str]:
    base = cfg.source.parent if cfg.source else None
    return list(load_list("templates", cfg.templates, base))


def limit_samples(samples: SampleSet, limit: int | None, seed: int) -> SampleSet:
    """A seeded random subset (kept in dataset order), so ``--limit`` covers every class, reproducibly."""
    if not limit or limit >= len(samples):
        return samples
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).choice(len(samples), size=limit, replace=False))
    return samples.subset(keep.tolist())


def evaluate_task(
    adapter: "ModelAdapter", cfg: "TaskConfig", catalog: "Catalog", options: RunOptions,
    classifiers: ClassifierCache, reporter: Reporter, model_spec: str | None = None,
) -> dict[str, Any]:
    """Run one model on one task; return the result record's task-dependent parts and the sample log."""
    import numpy as np

    from covar_harness.metrics import bootstrap_interval, classification_metrics

    samples = limit_samples(open_task_data(cfg, catalog, options.data_dir), options.limit, options.seed)
    classnames, templates = task_classnames(cfg, samples), task_templates(cfg)
    n_classes = len(classnames)
    bad = [s.label for s in samples.samples if not 0 <= s.label < n_classes]
    if bad:
        raise ValueError(f"task {cfg.task!r}: label {bad[0]} outside the {n_classes} class names")
    W = classifiers.get(classnames, templates, reporter)
    for step in options.steps:
        # model_spec names the pair's output folders (maps); steps written before it existed do not take it
        call_with_accepted(partial(step.start, adapter, cfg, samples), model_spec=model_spec)
    masks = _patch_masks(adapter, cfg, samples, classnames, catalog, options)
    k = min(5, n_classes)
    rows, failures, step_records, fg_grids = _batch_loop(adapter, cfg, samples, W, k, masks, options, reporter)

    if failures:
        first = failures[0]
        reporter.say(
            f"[yellow]{markup(cfg.task)}: skipped {len(failures)} unreadable image(s); first: "
            f"{markup(samples.samples[first[0]].id)} ({markup(first[1])})[/yellow]"
        )
    idx = np.array([i for i, _ in rows], dtype=np.int64)
    topk = np.stack([t for _, t in rows]) if rows else np.zeros((0, k), dtype=np.int64)
    labels = np.array([samples.samples[i].label for i in idx], dtype=np.int64)
    metrics = classification_metrics(labels, topk, n_classes)
    correct = (topk[:, 0] == labels) if len(rows) else np.zeros(0, bool)
    intervals = {}
    if len(rows):
        intervals["acc1"] = list(bootstrap_interval(correct.astype(float), seed=options.seed))
    record: dict[str, Any] = {"metrics": metrics, "intervals": intervals, "config": {}, "notes": []}
    for step in options.steps:
        summary = step.finish(step_records[step.name])
        record["metrics"].update(summary.get("metrics", {}))
        record["intervals"].update(summary.get("intervals", {}))
        record["config"][step.name] = summary.get("config", {})
        record["notes"] += summary.get("notes", [])

    per_sample = _sample_rows(rows, correct, samples, step_records)
    if masks is not None:
        _diagnose(record, per_sample, fg_grids, masks, cfg, classnames, options)
    record["task"] = {
        "name": cfg.task, "version": cfg.version, "n_samples": int(len(rows)), "n_failed": len(failures),
        "n_classes": n_classes, "data_fingerprint": samples.fingerprint(), "headline": cfg.headline,
        "tags": list(cfg.tags), "dataset": samples.description,
    }
    if getattr(samples, "label_mapping", None):
        record["task"]["label_mapping"] = samples.label_mapping
    record["config"].update({"templates": templates, "classnames": _classnames_ref(cfg)})
    record["samples"] = per_sample
    record["failed_files"] = [samples.samples[i].id for i, _ in failures]
    return record


def _batch_loop(adapter, cfg, samples, W, k, masks, options, reporter):
    """The one pass over the images: zero-shot top-k per sample, then each analysis step on the same batch."""
    import torch
    import torch.nn.functional as F

    rows, failures, step_records = [], [], {s.name: [] for s in options.steps}
    fg_grids: dict[int, Any] = {}
    W_dev = None
    workers = default_workers() if options.workers is None else options.workers
    handle = reporter.task(markup(cfg.task), len(samples))
    for indices, pixels, failed in iterate_batches(samples, adapter.preprocess, options.batch_size, workers):
        INTERRUPT.check()
        failures += failed
        if pixels is not None:
            emb = F.normalize(adapter.encode_images(pixels).float(), dim=-1)
            if W_dev is None:
                W_dev = W.to(emb.device)
            logits = emb @ W_dev
            top = logits.topk(k, dim=-1).indices.cpu().numpy()
            rows += [(i, top[r]) for r, i in enumerate(indices)]
            if options.steps:
                labels = torch.tensor([samples.samples[i].label for i in indices])
                fg = masks.for_batch(indices) if masks is not None else None
                if fg is not None:
                    fg_grids.update((i, g) for i, g in zip(indices, fg) if g is not None)
                batch = Batch(indices, pixels, emb, W_dev, logits, labels, samples, fg)
                for step in options.steps:
                    step_records[step.name] += step.process(batch)
        reporter.advance(handle, len(indices) + len(failed))
    reporter.done(handle)
    return rows, failures, step_records, fg_grids


def _sample_rows(rows, correct, samples: SampleSet, step_records: dict[str, list[dict]]) -> list[dict]:
    """The per-sample log (DESIGN 6): prediction, top-5, the dataset's metadata, then each step's record."""
    by_step = [{r["index"]: r for r in records} for records in step_records.values()]
    out = []
    for (i, top), ok in zip(rows, correct):
        sample = samples.samples[i]
        row = {"index": int(i), "file": sample.id, "label": sample.label, "pred": int(top[0]),
               "correct": bool(ok), "top5": [int(x) for x in top]}
        for key, value in sample.meta.items():
            row.setdefault(key, value)
        for by_index in by_step:
            row.update({k: v for k, v in by_index.get(int(i), {}).items() if k != "index"})
        out.append(row)
    return out


def _patch_masks(adapter, cfg, samples, classnames, catalog, options):
    """Foreground masks on the patch grid, when diagnosis is on and an attribution step runs on this task."""
    from covar_harness.adapter import attribution_support

    active = [s for s in options.steps if getattr(s, "active", True)]
    if options.diagnosis is None or options.segmenter == "none" or not active or not attribution_support(adapter)[0]:
        return None
    from covar_harness.segmentation import PatchMasks, choose_segmenter

    segmenter = choose_segmenter(options.segmenter, samples, catalog, options.segmenter_settings)
    return PatchMasks(segmenter, samples, classnames, adapter.preprocess, adapter.patch_grid)


def _diagnose(record, per_sample, fg_grids, masks, cfg, classnames, options) -> None:
    """Driver and error type per sample, BG-Er / Fine-Er into the metrics (DESIGN 8)."""
    from covar_harness.diagnosis import diagnose

    if masks.failed is not None:
        record["notes"].append(f"diagnosis skipped: {masks.failed}")
        record["config"]["diagnosis"] = {"status": "skipped", "reason": masks.failed}
        return
    from covar_harness.tasks.class_groups import class_groups, class_groups_rule

    result = diagnose(per_sample, fg_grids, class_groups(cfg, classnames), options.diagnosis)
    for row in per_sample:
        row.update(result.per_sample.get(row["index"], {}))
    record["metrics"].update(result.metrics)
    record["intervals"].update({k: v for k, v in result.intervals.items()})
    record["config"]["diagnosis"] = {**result.config, "fine_rule": class_groups_rule(cfg, classnames),
                                     "segmenter": masks.describe(), "by_rule": result.by_rule}


def _classnames_ref(cfg: "TaskConfig") -> Any:
    return cfg.classnames if isinstance(cfg.classnames, str) or cfg.classnames is None else "inline"


# ---- the run -------------------------------------------------------------------------------------------
class _Interrupt:
    """Ctrl-C always stops the run (exit 130), wherever SIGINT lands.

    A KeyboardInterrupt can be swallowed (raised inside a ``__del__`` or while DataLoader workers fork) or turn
    into a "worker exited unexpectedly" error that would fail a pair instead. Our handler also sets a flag,
    checked at every batch and pair boundary and before any error is recorded as a pair failure.
    """

    def __init__(self) -> None:
        self.hit = False

    def _handler(self, signum, frame) -> None:
        self.hit = True
        raise KeyboardInterrupt

    @contextmanager
    def installed(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.hit = False
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            self.hit = False  # handled: a later run (or a direct evaluate_task call) starts clean

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt


INTERRUPT = _Interrupt()  # signal handlers are process-wide, so is this flag


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops the run cleanly; when it does, a worker's
    fd-sharing thread finds its pipe closed, which is expected then and not worth a traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    default = sys.excepthook

    def quiet_pipes(kind, value, tb):
        if not issubclass(kind, (BrokenPipeError, ConnectionResetError)):
            default(kind, value, tb)

    sys.excepthook = quiet_pipes


def run(
    models: list["ModelRef"], tasks: list["TaskConfig"], catalog: "Catalog", options: RunOptions,
    reporter: Reporter | None = None, plan: list["PlannedPair"] | None = None,
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
                    outcomes.append(_report(reporter, PairOutcome(ref.spec, p.cfg.task, "skipped", p.path,
                                                                  error=p.reason)))
            pending = [p for p in mine if p.status == "run"]
            if pending:
                outcomes += _run_model(ref, pending, catalog, options, reporter)
        INTERRUPT.check()
    return outcomes


def _unique_refs(plan: list["PlannedPair"]) -> list["ModelRef"]:
    refs: list = []
    for p in plan:
        if not any(p.ref is r for r in refs):
            refs.append(p.ref)
    return refs


def _report(reporter: Reporter, outcome: PairOutcome) -> PairOutcome:
    reporter.pair_done(outcome)
    return outcome


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
        return [_report(reporter, PairOutcome(ref.spec, p.cfg.task, "failed", p.path, error=msg, advice=advice))
                for p in pending]
    finally:
        reporter.done(handle)
    classifiers = ClassifierCache(adapter)
    return [_report(reporter, _run_pair(ref, adapter, p.cfg, p.path, catalog, options, classifiers, reporter,
                                        device)) for p in pending]


def one_line(exc: BaseException) -> str:
    """An exception as one line of plain text (control characters removed: messages may quote untrusted input)."""
    text = safe(str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _run_pair(ref, adapter, cfg, path, catalog, options, classifiers, reporter, device) -> PairOutcome:
    """Everything one pair does, writing included, inside one handler: a failing pair never stops the run."""
    started = results.now()
    try:
        record = evaluate_task(adapter, cfg, catalog, options, classifiers, reporter, ref.spec)
        out = _result_object(ref, adapter, record, options, device, started)
        if options.log_samples:
            results.write_jsonl(results.samples_path(path), record["samples"])
        results.write_json(path, out)  # last: its existence marks the pair done
    except Exception as exc:
        INTERRUPT.check()
        log.debug("pair %s x %s failed:\n%s", ref.spec, cfg.task, traceback.format_exc())
        return PairOutcome(ref.spec, cfg.task, "failed", path, error=one_line(exc))
    return PairOutcome(ref.spec, cfg.task, "done", path, out["metrics"], n_failed=len(record["failed_files"]))


def _result_object(ref, adapter, record, options, device, started) -> dict[str, Any]:
    """The result file's content (DESIGN 6): model, task, metrics with intervals, settings, provenance."""
    return {
        "schema_version": results.SCHEMA_VERSION,
        "model": {"spec": ref.spec, "name": getattr(adapter, "name", ref.spec),
                  "family": getattr(adapter, "family", ref.family), "target": ref.target},
        "task": record["task"],
        "metrics": record["metrics"],
        "intervals": record["intervals"],
        "config": {"batch_size": options.batch_size, "precision": options.precision, "seed": options.seed,
                   "limit": options.limit, **record["config"], "run_settings": options.result_settings()},
        "notes": record["notes"],
        "failed_files": record["failed_files"][:100],
        "provenance": results.provenance(device, started),
    }
