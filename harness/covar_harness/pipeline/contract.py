"""The per-pair analysis pipeline: one context per model x task, steps that turn batches into typed records, and
the typed summary each step ends with.

The evaluator runs the zero-shot pass. For every batch it asks each active analysis step, in order, for its
records: dataclasses, one per sample, each serialising itself (``log_fields``) to exactly the fields it adds to
that sample's line of the sample log. A later step reads an earlier step's records of the same batch by type
(:meth:`Batch.record`): diagnosis reads attribution's ``AttributionRecord``, so a renamed field is an
``AttributeError`` (and a type error for mypy), never a sample silently "undetermined". At the end each step turns
all its records into a :class:`StepSummary` (metrics, intervals, config, notes).

Data only flows forward: a step reads the records (and :meth:`Batch.carried` objects) of the steps before it in
the same batch, never those of a later one. The run's order (docs/design.md section 7): masks, attribution,
diagnosis, distractors, maps, concepts. Masks are a record like any other (``masks.step.MaskRecord``).

Writing a step: subclass :class:`Step` (the base class holds the defaults of everything the evaluator asks of a
step) and override ``start``, ``process`` and ``finish``. Anything else is refused when the pipeline is built.

Nothing here imports torch or numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from covar_harness.common.cost import Cost

if TYPE_CHECKING:
    import numpy as np
    import torch

    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.catalog.taskconfig import TaskConfig
    from covar_harness.data.samples import ClassMap, SampleSet

R = TypeVar("R", bound="SampleRecord")
T = TypeVar("T")


# ---- records ----------------------------------------------------------------------------------------------------
class JsonRecord:
    """A typed record that serialises itself: steps read each other's records by attribute, files get ``to_json``."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


class SampleRecord(JsonRecord):
    """One step's result for one sample: ``index`` (position in the task's SampleSet) and ``log_fields()``, the
    fields it adds to that sample's log line, in the order they are written."""

    index: int

    def log_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, **self.log_fields()}


@dataclass(eq=False)
class StepSummary(JsonRecord):
    """What a step reports for the whole pair. ``config`` None: the step adds no ``config`` entry (it had nothing
    to do). ``log_records`` False: its per-sample records stay out of the sample log (a withdrawn result)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    log_records: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "intervals": self.intervals, "config": self.config, "notes": self.notes}


# ---- context and batch ------------------------------------------------------------------------------------------
class RunSettings(Protocol):
    """What steps and the per-pair pass read of the run's options; ``run.options.RunOptions`` is the one
    implementation. A protocol here, so that the contract does not import the run stage above it."""

    data_dir: Path | None
    seed: int
    precision: str
    text_cache: Path | None
    segmenter: str
    diagnosis: Any
    batch_size: int | str
    workers: int | None
    checkpoint_every: int
    world: Any

    @property
    def rows_per_batch(self) -> int: ...

    def result_settings(self) -> dict[str, Any]: ...


class Progress(Protocol):
    """The progress calls a step may make; ``run.progress.Reporter`` implements them (silent without a terminal)."""

    def task(self, description: str, total: int | None) -> Any: ...

    def advance(self, handle: Any, n: int = 1) -> None: ...

    def done(self, handle: Any) -> None: ...

    def say(self, message: str) -> None: ...


@dataclass
class PairContext:
    """Everything a step may need about the model x task pair it runs on, handed to ``start``."""

    adapter: Any  # covar_harness.models.adapter.ModelAdapter
    task: TaskConfig | None
    samples: SampleSet
    classnames: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    model_spec: str | None = None  # the --models spec: names the pair's output folders
    catalog: Catalog | None = None
    options: RunSettings | None = None  # the run's RunOptions
    reporter: Progress | None = None  # the run's Reporter
    classifier: torch.Tensor | None = None  # (D, C) class embeddings, L2-normalised, on CPU
    steps: list[Step] = field(default_factory=list)  # the pair's pipeline, in order
    # A class-mapped pair (data.samples.ClassMap, e.g. ImageNet-9's 1000-way protocol): ``classifier`` is over the
    # map's classes and ``classnames`` are the task's labels (+ the unclaimed bucket); ``label_classifier`` holds
    # one embedding per ``classnames`` entry (the normalised mean of its classes), for steps that compare classes.
    class_map: ClassMap | None = None
    label_classifier: torch.Tensor | None = None

    def class_embeddings(self) -> torch.Tensor | None:
        """(D, len(classnames)): one embedding per class name, whether or not the pair is class-mapped."""
        return self.classifier if self.label_classifier is None else self.label_classifier

    cost: Cost = field(default_factory=Cost)  # wall time and forward passes per phase (provenance.cost)

    def upstream_of(self, step: Step) -> list[Step]:
        """The steps that run before ``step`` on every batch."""
        for i, other in enumerate(self.steps):
            if other is step:
                return self.steps[:i]
        return list(self.steps)


@dataclass
class Batch:
    """What the zero-shot pass hands to analysis steps for one batch of images."""

    indices: list[int]  # positions in the SampleSet
    pixels: torch.Tensor  # (B, 3, H, W), on CPU, as preprocessed
    image_emb: torch.Tensor  # (B, D), L2-normalised
    # (D, C) class embeddings, L2-normalised; or (B, D, C), one set per image, on a class-mapped pair: column c is
    # the classifier class that gives label c its score on that image (read it through class_text / classifier_of)
    classifier: torch.Tensor
    logits: torch.Tensor  # (B, C)
    labels: torch.Tensor  # (B,)
    samples: SampleSet
    top: np.ndarray | None = None  # (B, k) zero-shot top-k class indices, best first (the logged top5)
    upstream: dict[int, list[SampleRecord]] = field(default_factory=dict)  # index -> earlier steps' records
    tokens: torch.Tensor | None = None  # (B, N, C) patch tokens at ``Pipeline.token_layer()``, from the same forward
    # objects a step leaves for later steps of the same batch (tensors, e.g. attribution's leave-one-out embeddings
    # that concept naming reads): never logged, never kept past the batch, so records stay small and picklable
    transient: list[Any] = field(default_factory=list)

    def pred(self, row: int) -> int:
        """The zero-shot prediction of batch row ``row``: the logged ``pred``."""
        if self.top is not None:
            return int(self.top[row][0])
        return int(self.logits[row].argmax())

    def class_text(self, rows: Sequence[int], classes: torch.Tensor) -> torch.Tensor:
        """(R, D): the embedding of class ``classes[j]`` for batch row ``rows[j]`` (per image on a class-mapped
        pair, where a label's embedding is the one of its best-scoring classifier class on that image)."""
        W = self.classifier
        classes = classes.to(W.device).long()
        if W.dim() == 2:
            return W[:, classes].T
        return W[classes.new_tensor(list(rows)), :, classes]

    def classifier_of(self, rows: Sequence[int]) -> torch.Tensor:
        """The classifier the rows' embeddings are scored with: (D, C), or (R, D, C) per image on a class-mapped
        pair; ``embeddings @ classifier_of(rows)`` scores (R, ..., D) embeddings either way."""
        return self.classifier if self.classifier.dim() == 2 else self.classifier[list(rows)]

    def record(self, index: int, kind: type[R]) -> R | None:
        """The record of type ``kind`` an earlier step made for sample ``index`` in this batch, if any."""
        return next((r for r in self.upstream.get(index, ()) if isinstance(r, kind)), None)

    def carry(self, item: Any) -> None:
        """Leave ``item`` for the later steps of this batch (read back by type with :meth:`carried`)."""
        self.transient.append(item)

    def carried(self, kind: type[T]) -> T | None:
        """The object of type ``kind`` an earlier step left on this batch (:meth:`carry`), if any."""
        return next((x for x in self.transient if isinstance(x, kind)), None)

    def add(self, records: Sequence[SampleRecord]) -> None:
        for r in records:
            self.upstream.setdefault(r.index, []).append(r)


# ---- steps ------------------------------------------------------------------------------------------------------
@runtime_checkable
class BatchStep(Protocol):
    """An analysis run inside the batch loop. Data flows forward: ``start`` per pair, ``process`` per batch
    (records), ``finish`` once (a summary). ``active`` False after ``start``: the step sits this pair out."""

    name: str
    active: bool

    def start(self, ctx: PairContext) -> None: ...

    def process(self, batch: Batch) -> Sequence[SampleRecord]: ...

    def finish(self, records: list[SampleRecord]) -> StepSummary: ...

    def run_settings(self) -> dict[str, Any]: ...


class Step:
    """Base class of analysis steps: the defaults of everything the evaluator asks of a step."""

    name: str = "step"
    active: bool = True  # False (set in ``start``): no ``process`` calls for this pair
    # attributes beyond the scalar ones (counters, status: always kept) that a resumed pair restores as they were
    # after its last finished batch (``run.partfiles``): state that later batches or ``finish`` read, such as
    # which methods failed; plain picklable data, copied with every batch
    resumed: tuple[str, ...] = ()

    @property
    def token_layer(self) -> int | str | None:
        """None here; a step that clusters tokens of a block names it, else the batch loop takes them from the
        zero-shot forward itself (``Batch.tokens``) when the adapter can, one pass fewer per batch."""
        return None

    def start(self, ctx: PairContext) -> None:
        """Per model x task, before the first batch; may switch the step off (``active = False``)."""

    def process(self, batch: Batch) -> Sequence[SampleRecord]:
        """Records for (some of) the batch's samples; only called while ``active``."""
        return []

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        """The pair's summary from every record ``process`` returned."""
        return StepSummary(config={})

    def run_settings(self) -> dict[str, Any]:
        """Every setting that can change a number: recorded as ``config.run_settings.steps[name]`` and compared
        before an existing result is reused."""
        return {"method": self.name, "only_with_masks": False}


@dataclass
class Finished:
    """One step's outcome for a pair: its summary and the records it made."""

    step: Step
    summary: StepSummary
    records: list[SampleRecord]


class Pipeline:
    """The analysis steps of one model x task pair, run in order on every batch of the zero-shot pass."""

    def __init__(self, steps: Sequence[Step]):
        for step in steps:
            if not isinstance(step, Step):
                raise TypeError(f"analysis step {step!r} is not a covar_harness.pipeline.contract.Step subclass")
        self.steps = list(steps)
        self.records: list[list[SampleRecord]] = [[] for _ in self.steps]
        self.cost = Cost()  # the pair's (``ctx.cost`` once started): each step's time is the phase of its name

    def start(self, ctx: PairContext) -> None:
        ctx.steps, self.cost = self.steps, ctx.cost
        for step in self.steps:
            with self.cost.phase(step.name):
                step.start(ctx)

    @property
    def active(self) -> bool:
        return any(step.active for step in self.steps)

    def token_layer(self) -> int | str | None:
        """The layer whose patch tokens the first active step reading tokens wants (None: no step does)."""
        wanted = (step.token_layer for step in self.steps if step.active)
        return next((layer for layer in wanted if layer is not None), None)

    def process(self, batch: Batch) -> None:
        for step, kept in zip(self.steps, self.records):
            if step.active:
                with self.cost.phase(step.name):
                    records = list(step.process(batch))
                batch.add(records)
                kept += records

    def finish(self) -> list[Finished]:
        out = []
        for step, records in zip(self.steps, self.records):
            with self.cost.phase(step.name):
                out.append(Finished(step, step.finish(records), records))
        return out
