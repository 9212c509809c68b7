"""One pair's pass and its record: the one pass over the images (zero-shot top-k per sample, the analysis
pipeline's steps on the same batch, finished batches to the part file), the contract of a task kind's pair
(:class:`TaskPair`: what ``evaluator.evaluate_task`` opens for classification and retrieval alike) and the
assembly of a classification pair's record (metrics and intervals, the task's part, the per-sample log).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from covar_harness.common.console import markup
from covar_harness.common.cost import Cost
from covar_harness.common.interrupt import INTERRUPT
from covar_harness.common.metrics import (
    bootstrap_interval,
    classification_metrics,
    per_class_recall_interval,
    source_clusters,
)
from covar_harness.data.samples import SampleSet
from covar_harness.models.adapter import check_finite, fuses_tokens
from covar_harness.pipeline.contract import Batch, Finished, PairContext, Pipeline, Step
from covar_harness.run.batches import default_workers, is_cuda, iterate_batches, to_device
from covar_harness.run.distributed import PairSync, World, finish_share
from covar_harness.run.group_metrics import add_group_metrics
from covar_harness.run.partfiles import Checkpointer

if TYPE_CHECKING:
    import numpy as np
    import torch

    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.catalog.taskconfig import TaskConfig
    from covar_harness.models.adapter import ModelAdapter
    from covar_harness.run.options import RunOptions
    from covar_harness.run.progress import Reporter
    from covar_harness.run.text_cache import ClassifierCache


@dataclass(frozen=True)
class PairRequest:
    """What opening a pair of any task kind takes (``evaluator.open_task_pair`` and each kind's ``open``): one
    record, so the kinds share one signature. ``classifiers``: the model's class-embedding cache (a retrieval pair
    encodes its own caption sets); ``cost``: where the pair's phase timings and forward passes go."""

    adapter: ModelAdapter
    task: TaskConfig
    catalog: Catalog
    options: RunOptions
    classifiers: ClassifierCache
    reporter: Reporter
    model_spec: str | None = None
    cost: Cost = field(default_factory=Cost)


class TaskPair(Protocol):
    """One model x task pair of one task kind, opened (``evaluator.PAIR_KINDS``): the context and the steps of its
    pass through :func:`image_pass`, and how the pass's rows, unreadable images and step outcomes become the
    pair's record. Why one contract: every kind gets the pass's part files (resume), ranks and cost phases."""

    ctx: PairContext
    skipped: str  # what the run's warning says an unreadable image takes with it
    # what class i of ``ctx.classifier`` stands for where it is not class name i (retrieval: image i's caption set):
    # recorded by what explains classes outside a run's record (the faithfulness result's ``settings``)
    explained: dict[str, str]

    def steps(self) -> list[Step]: ...

    def record(self, rows: list, failures: list, finished: list[Finished]) -> dict[str, Any]: ...


def image_pass(ctx: PairContext, pipeline: Pipeline, part: Path | None = None) -> tuple[list, list]:
    """The one pass over the images: zero-shot top-k per sample, then the pipeline's steps on the same batch;
    finished batches go to the pair's part file (``part``) and a rerun goes on after them (partfiles.py).
    Returns (rows, failures): ``(index, top-k class indices)`` per forwarded sample, ``(index, why)`` per image
    that could not be read. Every per-sample pass of the harness goes through here."""

    options, samples, reporter = ctx.options, ctx.samples, ctx.reporter
    assert options is not None and reporter is not None and ctx.classifier is not None and ctx.task is not None
    k = min(5, len(ctx.classnames))
    world = options.world or World()
    sync = PairSync.of(world, part) if world.active and part is not None else None
    every = world.checkpoint_every(options.checkpoint_every)
    ck = Checkpointer.open(part if sync is None else sync.part(), every, ctx, pipeline, strict=sync is not None)
    rows, failures = ck.rows, ck.failures
    W_dev = members = None
    workers = default_workers() if options.workers is None else options.workers
    own = world.own_batches(len(samples), options.rows_per_batch, ck.n_batches) if sync is not None else None
    handle = reporter.task(markup(ctx.task.task), len(samples) if own is None else ck.start + sum(map(len, own)))
    reporter.advance(handle, ck.start)
    device = getattr(ctx.adapter, "device", None)
    batches = iterate_batches(
        samples, ctx.adapter.preprocess, options.rows_per_batch, workers, ck.start, own, pin_memory=is_cuda(device)
    )
    cost = ctx.cost
    try:
        for indices, pixels, failed in _timed(batches, cost):
            INTERRUPT.check()
            if sync is not None:
                sync.check()  # another rank failed this pair: stop now, not at the merge
            failures += failed
            new: list = []
            if pixels is not None:
                with cost.phase("zero-shot"):
                    raw, tokens = _forward(ctx.adapter, to_device(pixels, device), pipeline)
                    image_id = _image_ids(ctx, indices)
                    check_finite(ctx.adapter, "encode_images", raw, image_id, "image")
                    emb = F.normalize(raw.float(), dim=-1)
                    if W_dev is None:
                        W_dev, members = ctx.classifier.to(emb.device), _members(ctx, emb.device)
                    logits, W_batch = emb @ W_dev, W_dev
                    check_finite(ctx.adapter, "logits (image x class text)", logits, image_id, "image")
                    if members is not None:  # a class-mapped pair: scores per label, classifier per image
                        logits, W_batch = mapped_scores(logits, W_dev, members)
                    top = logits.topk(k, dim=-1).indices.cpu().numpy()
                new = [(i, top[r]) for r, i in enumerate(indices)]
                rows += new
                if pipeline.active:
                    pipeline.process(_batch(ctx, indices, pixels, emb, W_batch, logits, top, tokens))
            with cost.phase("write"):
                ck.done(new, failed, len(indices) + len(failed))
            reporter.advance(handle, len(indices) + len(failed))
    finally:
        with cost.phase("write"):
            ck.flush()  # also on Ctrl-C or a failing batch: the batches finished so far are kept
    reporter.done(handle)
    return (rows, failures) if sync is None else finish_share(ctx, ck, sync)


def _image_ids(ctx: PairContext, indices: list[int]) -> Callable[[int], str]:
    """Batch row -> the sample's id (what a one-line error names)."""
    return lambda row: ctx.samples.samples[indices[row]].id


def _members(ctx: PairContext, device: Any) -> torch.Tensor | None:
    """(L, F) which classifier classes each label bucket takes, on a class-mapped pair; else None."""

    if ctx.class_map is None:
        return None
    n_labels = len(ctx.classnames) - int(ctx.class_map.has_other)
    return torch.tensor(ctx.class_map.members(n_labels), dtype=torch.bool, device=device)


def mapped_scores(logits: torch.Tensor, W: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) label scores from (B, F) classifier logits: each label bucket's largest logit, so the argmax over
    buckets is the label of the F-way top-1 (``data.samples.ClassMap``); and (B, D, L) per image, the embedding of
    the classifier class that gives each bucket its score, which is what that score is a cosine with (what
    attribution explains, and what the region test scores region-only embeddings against)."""
    masked = logits[:, None, :].masked_fill(~members[None], float("-inf"))  # (B, L, F)
    scores, best = masked.max(dim=-1)
    return scores, W.T[best].transpose(1, 2)


def label_embeddings(W: torch.Tensor, members: list[list[bool]]) -> torch.Tensor:
    """(D, L): per label bucket, the normalised mean of its classifier classes' embeddings; a class-mapped pair's
    one embedding per label, for what compares labels with each other (the fine rule's embedding similarity)."""

    take = torch.tensor(members, dtype=W.dtype, device=W.device)  # (L, F)
    return F.normalize(W @ take.T, dim=0)


def _timed(batches: Iterable, cost: Cost) -> Iterator:
    """The batches, with the time spent waiting for each (reading and preprocessing images) as phase ``data``."""
    it = iter(batches)
    while True:
        with cost.phase("data"):
            item = next(it, None)
        if item is None:
            return
        yield item


def _forward(adapter: Any, pixels: torch.Tensor, pipeline: Pipeline) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The zero-shot forward; when an active step reads patch tokens and the adapter fuses them into the same
    forward (``encode_images_with_tokens``), those tokens too, so that step needs no pass of its own."""

    layer = pipeline.token_layer() if pipeline.active else None
    if layer is not None and fuses_tokens(adapter, layer):
        return adapter.encode_images_with_tokens(pixels, layer=layer)
    return adapter.encode_images(pixels), None


def _batch(
    ctx: PairContext,
    indices: list[int],
    pixels: torch.Tensor,
    emb: torch.Tensor,
    W: torch.Tensor,
    logits: torch.Tensor,
    top: np.ndarray,
    tokens: torch.Tensor | None = None,
) -> Batch:
    """What the steps see of one batch (the mask step, first in the pipeline, adds its samples' masks)."""

    labels = torch.tensor([ctx.samples.samples[i].label for i in indices])
    return Batch(indices, pixels, emb, W, logits, labels, ctx.samples, top, tokens=tokens)


def zero_shot_record(ctx: PairContext, rows: list) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics and the acc1 interval of the zero-shot pass; also which samples were correct."""

    k = min(5, len(ctx.classnames))
    topk = np.stack([t for _, t in rows]) if rows else np.zeros((0, k), dtype=np.int64)
    chosen = [ctx.samples.samples[i] for i, _ in rows]
    record, correct = zero_shot_summary(
        [s.label for s in chosen],
        topk,
        n_labels(ctx),
        [s.meta.get("source_id") for s in chosen],
        [s.meta.get("group") for s in chosen],
        ctx.options.seed if ctx.options is not None else 0,
        weights=ctx.samples.group_weights,
    )
    record["notes"] = list(getattr(ctx.samples, "notes", []))  # what the loader said about the data (no masks, ...)
    return record, correct


def zero_shot_summary(
    labels: list[int],
    topk: Any,
    n_classes: int,
    sources: list[Any],
    groups: list[Any],
    seed: int,
    n_boot: int = 1000,
    weights: Mapping[str, float] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """The zero-shot part of a result record (metrics, intervals, ``config.groups``) and which samples were right,
    from labels and top-k predictions in sample order (``weights``: the task's group weights, see group_metrics).
    The run and ``rescore`` (from the sample log) both call it."""

    labels_a = np.array(labels, dtype=np.int64)
    topk = np.asarray(topk, dtype=np.int64).reshape(len(labels_a), -1)
    metrics = classification_metrics(labels_a, topk, n_classes)
    correct = (topk[:, 0] == labels_a) if len(labels_a) else np.zeros(0, bool)
    intervals = {}
    if len(labels_a):  # resampling source objects where every sample names one (COVAR), else samples
        clusters = source_clusters(sources)
        acc = bootstrap_interval(correct.astype(float), n_boot=n_boot, seed=seed, clusters=clusters)
        intervals["acc1"] = list(acc or ())
        # class-balanced accuracy: resampled within each class (every class in every replicate), by source too
        recall = per_class_recall_interval(labels_a, correct, n_boot=n_boot, seed=seed, clusters=clusters)
        intervals["mean_per_class_recall"] = list(recall or ())
    record: dict[str, Any] = {"metrics": metrics, "intervals": intervals, "config": {}, "notes": []}
    add_group_metrics(record, correct.tolist(), groups, seed=seed, weights=weights, n_boot=n_boot)
    return record, correct


def task_record(ctx: PairContext, n_samples: int, n_failed: int) -> dict[str, Any]:
    cfg, samples = ctx.task, ctx.samples
    assert cfg is not None
    out: dict[str, Any] = {
        "name": cfg.task,
        "version": cfg.version,
        "n_samples": int(n_samples),
        "n_failed": n_failed,
        "n_classes": n_labels(ctx),
        "data_fingerprint": samples.fingerprint(),
        "headline": cfg.headline,
        "tags": list(cfg.tags),
        "dataset": samples.description,
    }
    if getattr(samples, "label_mapping", None):
        out["label_mapping"] = samples.label_mapping
    if ctx.class_map is not None:
        out["class_map"] = ctx.class_map.record(n_labels(ctx))
    return out


def n_labels(ctx: PairContext) -> int:
    """The task's classes: ``classnames`` without a class-mapped pair's bucket of unclaimed classes."""
    return len(ctx.classnames) - int(ctx.class_map is not None and ctx.class_map.has_other)


def sample_rows(rows, correct, samples: SampleSet, finished: list[Finished]) -> list[dict]:
    """The per-sample log (docs/design.md section 6): prediction, top-5, the dataset's metadata, then the fields of
    each step's record, in pipeline order (a withdrawn step's records are left out)."""
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
        out.append(row)
    return add_log_fields(out, finished)


def add_log_fields(rows: list[dict], finished: list[Finished]) -> list[dict]:
    """Each step's record's log fields added to its sample's row (``rows`` carry ``index``), in pipeline order; a
    step whose summary withdraws its records (``log_records`` false) adds nothing. Every pair kind's log."""
    by_index = {row["index"]: row for row in rows}
    for done in finished:
        for record in done.records if done.summary.log_records else ():
            row = by_index.get(int(record.index))
            if row is not None:
                row.update(record.log_fields())
    return rows


def add_step_summaries(
    record: dict[str, Any], finished: list[Finished], extra: Callable[[Finished], dict] | None = None
) -> None:
    """Each step's summary added to the pair's record, in pipeline order: its metrics, intervals, config entry
    (with ``extra(done)``'s keys, e.g. what a retrieval pair explains) and notes. Every pair kind's record."""
    for done in finished:
        record["metrics"].update(done.summary.metrics)
        record["intervals"].update(done.summary.intervals)
        if done.summary.config is not None:
            record["config"][done.step.name] = {**done.summary.config, **(extra(done) if extra else {})}
        record["notes"] += done.summary.notes


def classnames_ref(cfg: TaskConfig) -> Any:
    return cfg.classnames if isinstance(cfg.classnames, str) or cfg.classnames is None else "inline"
