"""Image-text retrieval tasks: recall@1/5/10 in both directions, computed as CLIP_benchmark computes them.

A task whose dataset format registers ``task_kind="retrieval"`` (the built-in ``retrieval`` format does) opens as a
:class:`RetrievalPair` (``evaluator.PAIR_KINDS``) and runs through the run's one pass over the images
(``pair.image_pass``), as a classification pair whose class i is image i's caption set (the normalised mean of its
captions' embeddings, ``caption_sets``) and whose label is i (``self_labelled``): so part files (resume), ranks,
cost phases and the analysis steps apply as on any pair. The pass's first step, :class:`ImageEmbeddingStep`,
keeps each image's normalised embedding as a record (in the part file with the other records); recall is
computed from them once the pass is over. Every caption is encoded first, once.

The protocol (CLIP_benchmark, ``clip_benchmark/metrics/zeroshot_retrieval.py``): image and caption embeddings are
L2-normalised; ``scores = texts @ images.T``; each caption knows the index of its image (``texts_image_index``).
``image_retrieval_recall@k`` is, over captions, the share whose own image is among the k images of highest score
(text -> image); ``text_retrieval_recall@k`` is, over images, the share with at least one of their own captions
among the k captions of highest score (image -> text). Ranks come from ``torch.topk``, as there. Unlike
CLIP_benchmark, the score matrix is never held whole: it is computed ``SIMILARITY_BLOCK`` query rows at a time
in each direction, so memory stays bounded on COCO's 25,000 x 5,000 pairs. With fewer candidates than k, every
candidate is taken (recall 1; CLIP_benchmark raises there). An image that cannot be read is skipped and counted,
and its captions leave the candidate set with it. Intervals: percentile bootstrap over images (a caption's
outcome is resampled with its image).

Attribution (``run --attribution ...``) explains the paired caption: ``--cci-target label`` image i's own caption
set, ``pred`` the best-matching caption set of the task's images (image -> text top 1). The diagnosis is skipped
with a note (no masks, no classes), and so are analysis steps other than attribution (they explain class
predictions); ``--save-maps`` draws the maps after attribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from covar_harness.attribution.step import AttributionStep
from covar_harness.catalog.taskconfig import DEFAULT_HEADLINE, RECALL_K, RETRIEVAL_METRICS, TASK_KIND
from covar_harness.common.interrupt import INTERRUPT
from covar_harness.common.metrics import bootstrap_interval
from covar_harness.data.samples import open_task_data
from covar_harness.data.task_inputs import limit_samples
from covar_harness.models.adapter import check_finite
from covar_harness.pipeline.contract import Batch, Finished, PairContext, SampleRecord, Step, StepSummary
from covar_harness.run.pair import PairRequest, add_log_fields, add_step_summaries
from covar_harness.run.text_cache import TEXT_BATCH

if TYPE_CHECKING:
    from covar_harness.catalog.taskconfig import TaskConfig
    from covar_harness.models.adapter import ModelAdapter
    from covar_harness.run.progress import Reporter

SIMILARITY_BLOCK = 1024  # query rows per score block: 1024 x 25,000 floats = 100 MB at most
DIAGNOSIS_SKIPPED = "diagnosis skipped: a retrieval task has no foreground masks or classes"
PAIRED_TEXT = "paired_caption_mean"  # what attribution explains on a retrieval task (``caption_sets``)
OTHER_STEPS_SKIPPED = "analysis steps other than attribution skipped: they explain class predictions"


def headline_of(cfg: TaskConfig) -> str:
    """The task's headline when it names a recall metric, else the retrieval default (``acc1`` is the schema's
    default for every task, and means nothing here)."""
    return cfg.headline if cfg.headline in RETRIEVAL_METRICS else DEFAULT_HEADLINE


@dataclass
class Embeddings:
    """What recall is computed from: L2-normalised rows, and which caption belongs to which image row."""

    indices: list[int]  # sample index of each image row
    images: torch.Tensor  # (n_images, D), on the CPU
    texts: torch.Tensor  # (n_texts, D), on the CPU
    text_image: torch.Tensor  # (n_texts,) long: the image row of each caption (texts_image_index)
    failures: list[tuple[int, str]]
    device: Any  # where the model put its outputs: the score blocks are computed there (None: CPU)


@dataclass
class Hits:
    """0-based rank of the first positive within the top k, ``k_max`` (a miss) when not among them."""

    image_rank: np.ndarray  # (n_texts,) rank of the caption's image among the images (text -> image)
    text_rank: np.ndarray  # (n_images,) best rank of one of the image's captions among the captions
    k_images: int  # how many images each caption's top-k held (min(10, n_images))
    k_texts: int


def encode_captions(adapter: ModelAdapter, captions: list[str], reporter: Reporter) -> torch.Tensor:
    """(T, D) L2-normalised caption embeddings on the CPU, ``TEXT_BATCH`` captions per ``encode_texts`` call."""

    handle = reporter.task("encoding captions", len(captions))
    chunks = []
    with torch.no_grad():
        for start in range(0, len(captions), TEXT_BATCH):
            INTERRUPT.check()
            part = captions[start : start + TEXT_BATCH]
            raw = adapter.encode_texts(part)
            check_finite(adapter, "encode_texts", raw, part.__getitem__, "caption")
            chunks.append(F.normalize(raw.float(), dim=-1).cpu())
            reporter.advance(handle, len(part))
    reporter.done(handle)
    return torch.cat(chunks)


def encode_all_captions(adapter: ModelAdapter, samples: Any, reporter: Reporter) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's captions, encoded once: ((T, D) L2-normalised rows, (T,) the sample index of each row)."""

    captions = [samples.captions(i) for i in range(len(samples))]
    texts = encode_captions(adapter, [t for c in captions for t in c], reporter)
    return texts, torch.tensor([i for i, c in enumerate(captions) for _ in c], dtype=torch.long)


def caption_sets(texts: torch.Tensor, text_image: torch.Tensor, n_images: int) -> torch.Tensor:
    """(D, n_images): column i the L2-normalised mean of the normalised caption rows of image i: CLIP's recipe for
    a class embedding from its templates (``text_cache.build_classifier``), with the image's captions as the
    prompts. Why the mean and not the first caption: it uses every caption, and no caption is privileged by file
    order. Column i is the text that attribution (``run`` and ``faithfulness``) explains for image i."""

    sums = torch.zeros(n_images, texts.shape[1]).index_add_(0, text_image, texts)
    return F.normalize(sums, dim=-1).T.contiguous()  # the mean's direction is the sum's


@dataclass(eq=False)
class ImageEmbedding(SampleRecord):
    """One image's L2-normalised embedding from the pass (float32, CPU): what recall ranks. A record like any other,
    so it goes to the part file with the batch (resume, ranks); never logged."""

    index: int
    embedding: np.ndarray  # (D,)

    def log_fields(self) -> dict[str, Any]:
        return {}


class ImageEmbeddingStep(Step):
    """The first step of a retrieval pair: keeps each image's normalised embedding from the pass's zero-shot forward
    (no forward of its own), so that recall is computed from the one pass over the images."""

    name = "image_embeddings"

    def __init__(self) -> None:
        # where the model put its outputs (recall is computed there), as seen on this process's batches (the CPU
        # for a pair restored whole from its part file); a torch.device is no scalar, so no part file holds it
        self.device: torch.device = torch.device("cpu")

    def process(self, batch: Batch) -> list[ImageEmbedding]:
        self.device = batch.image_emb.device
        rows = batch.image_emb.detach().float().cpu().numpy()
        return [ImageEmbedding(int(i), rows[r]) for r, i in enumerate(batch.indices)]

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        return StepSummary(log_records=False)  # no config entry, nothing in the sample log


def recall_embeddings(
    records: list[SampleRecord], failures: list, texts: torch.Tensor, owner: torch.Tensor, device: Any
) -> Embeddings:
    """What recall ranks: the images read (the pass's ``ImageEmbedding`` records, in sample order), and the captions
    of those images only (a caption of an unreadable image leaves the candidate set with it), each pointing at its
    image's row."""

    kept = sorted((r for r in records if isinstance(r, ImageEmbedding)), key=lambda r: r.index)
    if not kept:
        first = f"; first: {failures[0][1]}" if failures else ""
        raise ValueError(f"no image of the task could be read ({len(failures)} failed{first})")
    indices = [r.index for r in kept]
    images = torch.from_numpy(np.stack([r.embedding for r in kept]))
    rows = {i: r for r, i in enumerate(indices)}
    own = [j for j, i in enumerate(owner.tolist()) if i in rows]
    text_image = torch.tensor([rows[i] for i in owner[own].tolist()], dtype=torch.long)
    return Embeddings(indices, images, texts[own], text_image, failures, device)


def topk_blocks(queries: torch.Tensor, gallery: torch.Tensor, k: int, block: int = SIMILARITY_BLOCK, device=None):
    """(Q, k) gallery indices of the k highest scores of each query row, best first: ``torch.topk`` over
    ``queries @ gallery.T``, ``block`` rows at a time (never the whole score matrix)."""

    gallery_dev = gallery.to(device) if device is not None else gallery
    out = []
    for start in range(0, len(queries), block):
        part = queries[start : start + block].to(gallery_dev.device)
        out.append(torch.topk(part @ gallery_dev.T, k, dim=1).indices.cpu())
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def _first_hit(match: torch.Tensor, k: int):
    """Per row, the 0-based position of the first True in ``match`` (Q, k), or ``k`` when there is none."""

    first = match.int().argmax(dim=1)
    return torch.where(match.any(dim=1), first, torch.full_like(first, k)).numpy()


def retrieval_hits(emb: Embeddings, block: int = SIMILARITY_BLOCK) -> Hits:
    """Ranks of the positives in both directions, from the top ``max(RECALL_K)`` of each query."""

    n_images, n_texts = len(emb.images), len(emb.texts)
    k_images, k_texts = min(max(RECALL_K), n_images), min(max(RECALL_K), n_texts)
    top_images = topk_blocks(emb.texts, emb.images, k_images, block, emb.device)  # text -> image
    image_rank = _first_hit(top_images == emb.text_image[:, None], k_images)
    top_texts = topk_blocks(emb.images, emb.texts, k_texts, block, emb.device)  # image -> text
    own = emb.text_image[top_texts] == torch.arange(n_images)[:, None]
    return Hits(image_rank, _first_hit(own, k_texts), k_images, k_texts)


def recall_metrics(hits: Hits, text_image: np.ndarray, seed: int = 0) -> tuple[dict[str, float], dict[str, list]]:
    """The six recalls and their bootstrap intervals over images (a caption resampled with its image)."""

    metrics: dict[str, float] = {}
    intervals: dict[str, list] = {}
    images_of_texts = [str(i) for i in text_image]
    for k in RECALL_K:
        for side, values, clusters in (
            ("image", hits.image_rank < k, images_of_texts),
            ("text", hits.text_rank < k, None),
        ):
            name = f"{side}_retrieval_recall@{k}"
            metrics[name] = float(values.mean())
            interval = bootstrap_interval(values.astype(float), seed=seed, clusters=clusters)
            intervals[name] = list(interval or ())
    return metrics, intervals


def _sample_rows(emb: Embeddings, hits: Hits, samples: Any) -> list[dict[str, Any]]:
    """The per-image log: 1-based ranks of the positives within the top 10 (null beyond)."""
    by_image: list[list[int | None]] = [[] for _ in emb.indices]
    for rank, row in zip(hits.image_rank.tolist(), emb.text_image.tolist()):
        by_image[row].append(rank + 1 if rank < hits.k_images else None)
    rows = []
    for row, i in enumerate(emb.indices):
        rank = int(hits.text_rank[row])
        rows.append(
            {
                "index": int(i),
                "file": samples.samples[i].id,
                "n_captions": len(by_image[row]),
                "text_rank": rank + 1 if rank < hits.k_texts else None,
                "image_ranks": by_image[row],
            }
        )
    return rows


def _task_record(cfg: TaskConfig, samples: Any, emb: Embeddings) -> dict[str, Any]:
    return {
        "name": cfg.task,
        "kind": TASK_KIND,
        "version": cfg.version,
        "n_samples": len(emb.indices),
        "n_failed": len(emb.failures),
        "n_classes": 0,
        "n_texts": len(emb.texts),
        "data_fingerprint": samples.fingerprint(),
        "headline": headline_of(cfg),
        "tags": list(cfg.tags),
        "dataset": samples.description,
    }


def self_labelled(samples: Any) -> Any:
    """A copy of the sample set in which image i's label is i: the "class" of image i is its own caption set."""

    own = samples.subset(list(range(len(samples))))  # a copy: the loader's samples keep their labels
    own.samples = [replace(s, label=i) for i, s in enumerate(samples.samples)]
    return own


@dataclass
class RetrievalPair:
    """A retrieval pair opened for the run's one pass over the images (``evaluator.PAIR_KINDS``): a classification
    pair whose class i is image i's caption set (``caption_sets``; as ``faithfulness`` explains it) and whose label
    is i (``self_labelled``). Its steps: the image embeddings (for recall), then the attribution steps and the maps
    (``--cci-target label`` explains the paired caption, ``pred`` the best-matching caption set; each record
    carries the other target's importances too). Masks and classes do not exist here, so the diagnosis and other
    steps are skipped with a note."""

    ctx: PairContext
    samples: Any  # the task's samples as loaded (the pass reads ``ctx.samples``, the self-labelled copy)
    texts: torch.Tensor  # (T, D) every caption, L2-normalised, on the CPU
    owner: torch.Tensor  # (T,) the sample index of each caption
    attribution: list[Step]
    notes: list[str]
    maps: Step | None = None
    embeddings: ImageEmbeddingStep = field(default_factory=ImageEmbeddingStep)
    skipped: str = "unreadable image(s) and their captions"  # what the run's warning says was left out
    explained: dict[str, str] = field(default_factory=lambda: {"task_kind": TASK_KIND, "explained_text": PAIRED_TEXT})

    @classmethod
    def open(cls, req: PairRequest) -> RetrievalPair:
        """The pair's samples (``--limit`` applied) and its caption sets, every caption encoded once (``data`` and
        ``zero-shot`` in the pair's cost, as a classification pair's class embeddings); the request's
        ``classifiers`` is unused: caption sets belong to one task's images."""
        cfg, catalog, options, cost = req.task, req.catalog, req.options, req.cost
        with cost.phase("data"):
            samples = limit_samples(open_task_data(cfg, catalog, options.data_dir), options.limit, options.seed)
        if not hasattr(samples, "captions"):
            raise ValueError(f"task {cfg.task!r}: format {cfg.dataset['format']!r} gave samples without captions")
        with cost.phase("zero-shot"):
            texts, owner = encode_all_captions(req.adapter, samples, req.reporter)
            W = caption_sets(texts, owner, len(samples))
        names = [s.id for s in samples.samples]
        own = self_labelled(samples)
        ctx = PairContext(
            req.adapter, cfg, own, names, [], req.model_spec, catalog, options, req.reporter, W, cost=cost
        )
        attribution: list[Step] = [s for s in options.steps if isinstance(s, AttributionStep)]
        notes = [OTHER_STEPS_SKIPPED] if len(attribution) < len(options.steps) else []
        notes += [DIAGNOSIS_SKIPPED] if options.diagnosis is not None else []
        maps = options.map_step() if attribution else None  # --save-maps: after attribution, as on classification
        return cls(ctx, samples, texts, owner, attribution, notes, maps)

    def _explained_text(self, done: Finished) -> dict[str, str]:
        """What an active attribution step's config entry adds: the text it explains (a caption set)."""
        explains = done.step.active and done.step in self.attribution
        return {"explained_text": self.explained["explained_text"]} if explains else {}

    def steps(self) -> list[Step]:
        """The pair's pipeline: the image embeddings first, then attribution and the maps."""
        return [self.embeddings, *self.attribution, *([] if self.maps is None else [self.maps])]

    def record(self, rows: list, failures: list, finished: list[Finished]) -> dict[str, Any]:
        """The record ``evaluator.evaluate_task`` returns (metrics, intervals, config, notes, task, samples,
        failed_files), with recall metrics instead of accuracy; ``rows`` (top-5 caption sets) are not logged."""
        ctx = self.ctx
        assert ctx.task is not None and ctx.options is not None
        kept = next(done.records for done in finished if done.step is self.embeddings)
        emb = recall_embeddings(kept, failures, self.texts, self.owner, self.embeddings.device)
        with ctx.cost.phase("retrieval"):
            hits = retrieval_hits(emb)
            metrics, intervals = recall_metrics(hits, emb.text_image.numpy(), ctx.options.seed)
        retrieval = {"recall_k": list(RECALL_K), "protocol": "CLIP_benchmark"}
        record: dict[str, Any] = {
            "metrics": metrics,
            "intervals": intervals,
            "config": {"templates": [], "retrieval": retrieval},
            "notes": list(self.notes),
        }
        add_step_summaries(record, finished, self._explained_text)
        samples = add_log_fields(_sample_rows(emb, hits, self.samples), finished)
        return {
            **record,
            "task": _task_record(ctx.task, self.samples, emb),
            "samples": samples,
            "failed_files": [self.samples.samples[i].id for i, _ in emb.failures],
        }
