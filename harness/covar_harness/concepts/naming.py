"""Naming CCI's regions (docs/design.md section 11): each cluster's contribution, scored against a concept bank
from the embeddings CCI's removal pass already computed, and the pipeline step that does it after the diagnosis.

**The score.** For cluster k of an image, e is the normalised image embedding and e_k the normalised embedding with
the cluster's patches removed. The bank is read as a zero-shot classifier over its concepts: p(e) = softmax over
the concepts of T * cos(e, c), with T the model's own logit scale (the temperature it turns cosines into class
probabilities with; 100, CLIP's, when the model does not expose one; ``--concepts-temperature``). A concept's score
for cluster k is p_c(e) - p_c(e_k): how much less the image is concept c, among the bank's concepts, once the
cluster is gone. It is CCI's leave-one-out measure applied to the concept classifier instead of the class.

Why not the plain direction d_k = e - e_k and cos(d_k, c) (the first choice, still what ``direction_scores``
computes): its ranking equals that of the cosine drop cos(e, c) - cos(e_k, c), which does not make the concepts
compete. Removing any region moves the embedding and changes its cosine with many concepts at once; the largest
change need not be the concept the region carries. On the demo's known truth (the shortcut model's background-driven
``bg_varied`` errors, driving background cluster, ``covar-shapes-backgrounds``) the cosine direction named the
background planted for the predicted class in 45% of 119 errors, the probability drop at the model's scale (14.4)
in 88%, the whole image's nearest concept 91%. No forward pass is added: the bank is embedded once per model
(cached) and naming is two matrix products per batch.

**The driving background cluster** of a sample with a foreground mask: among its clusters whose patches lie mostly
outside the object (mean foreground fraction < 0.5) and whose importance is positive, the one with the largest
importance. Its top concept names what drove a background-driven error (``error_type`` ``bg`` under the headline
driver rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from covar_harness.attribution.engine import LeaveOneOut
from covar_harness.attribution.records import AttributionRecord, short
from covar_harness.catalog.registry import UsageError
from covar_harness.concepts.banks import ConceptBank, resolve_bank
from covar_harness.concepts.settings import ConceptSettings
from covar_harness.concepts.summary import summarise
from covar_harness.diagnosis.rules import DiagnosisRecord
from covar_harness.masks.step import foreground
from covar_harness.models.adapter import DEFAULT_LOGIT_SCALE, logit_scale
from covar_harness.pipeline.contract import PairContext, SampleRecord, Step, StepSummary
from covar_harness.run.text_cache import store_for

if TYPE_CHECKING:
    import numpy as np
    import torch

    from covar_harness.pipeline.contract import Batch

PATCH_FG = 0.5  # a cluster is background when its patches' mean foreground fraction is below this


def direction_scores(emb: torch.Tensor, without: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(B, K, C) cos(e - e_k, concept): the plain contribution direction (kept for comparison; the module docstring
    says why naming uses :func:`cluster_concept_scores`). A cluster not removed (e_k = e) scores 0."""

    directions = F.normalize(emb.float()[:, None, :] - without.float(), dim=-1)
    return directions @ bank.to(directions.device, directions.dtype)


def cluster_concept_scores(
    emb: torch.Tensor, without: torch.Tensor, bank: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(B, K, C) p_c(e) - p_c(e_k), p = softmax over the bank's concepts of ``temperature`` * cosine, for the
    normalised embeddings ``emb`` (B, D), ``without`` (B, K, D) and the bank (D, C). A cluster not removed
    (e_k = e) scores 0 for every concept."""

    bank = bank.to(emb.device, torch.float32)
    full = (temperature * (emb.float() @ bank)).softmax(dim=-1)
    removed = (temperature * (without.float() @ bank)).softmax(dim=-1)
    return full[:, None, :] - removed


def top_concepts(
    scores: torch.Tensor, valid: torch.Tensor, names: list[str], top: int
) -> list[list[list[tuple[str, float]]]]:
    """Per image, per cluster: the ``top`` (concept, score) pairs, best first; [] for a cluster not removed."""
    best, order = scores.topk(min(top, scores.shape[-1]), dim=-1)
    values, indices, removed = best.cpu().tolist(), order.cpu().tolist(), valid.cpu().tolist()
    return [
        [[(names[c], short(v)) for c, v in zip(o, vs)] if ok else [] for o, vs, ok in zip(orders, vals, oks)]
        for orders, vals, oks in zip(indices, values, removed)
    ]


def driving_background_cluster(
    importance: Sequence[float], assignments: Sequence[int], fg: np.ndarray | None
) -> int | None:
    """The cluster of largest positive importance among those whose patches lie mostly outside the object (mean
    foreground fraction < ``PATCH_FG``); None without a mask or without such a cluster."""

    if fg is None:
        return None
    labels, frac = np.asarray(assignments), np.asarray(fg, dtype=np.float64)
    best, best_value = None, 0.0
    for k, value in enumerate(importance):
        member = labels == k
        if value > best_value and member.any() and float(frac[member].mean()) < PATCH_FG:
            best, best_value = k, value
    return best


def name_batch(
    emb: torch.Tensor,
    without: torch.Tensor,
    valid: torch.Tensor,
    bank: torch.Tensor,
    names: list[str],
    top: int,
    temperature: float,
    importances: Sequence[Sequence[float]],
    assignments: Sequence[Sequence[int]],
    fgs: Sequence[np.ndarray | None],
) -> list[tuple[list[list[tuple[str, float]]], int | None]]:
    """Per image: its clusters' top concepts and its driving background cluster (None without a mask or such a
    cluster). ``emb`` (B, D), ``without`` (B, K, D): the normalised embeddings CCI's removal call gave; ``bank``
    (D, C) and its softmax ``temperature``; per image its importances, patch assignments and foreground fraction
    per patch."""
    named = top_concepts(cluster_concept_scores(emb, without, bank, temperature), valid, names, top)
    return [
        (pairs, driving_background_cluster(imp, assign, fg) if imp else None)
        for pairs, imp, assign, fg in zip(named, importances, assignments, fgs)
    ]


@dataclass(frozen=True, eq=False)
class ConceptRecord(SampleRecord):
    """One attributed sample's named clusters: ``top[k]`` the (concept, score) pairs of cluster k (empty when
    not removed), the driving background cluster (samples with a mask) and whether the sample is a
    background-driven error under the headline rule (None: not diagnosed)."""

    index: int
    label: int
    pred: int
    top: list[list[tuple[str, float]]]
    driving: int | None
    bg_error: bool | None
    unit: str | None = None  # the bootstrap unit (``source_id``) when the dataset has one

    def concept(self, k: int | None) -> str | None:
        """The top concept of cluster ``k`` (None: no such cluster, or it was not removed)."""
        return None if k is None or k >= len(self.top) or not self.top[k] else self.top[k][0][0]

    def log_fields(self) -> dict[str, Any]:
        return {
            "concepts": {
                "clusters": [[[c, s] for c, s in pairs] for pairs in self.top],
                "driving_bg_cluster": self.driving,
                "driving_bg_concept": self.concept(self.driving),
            }
        }


class ConceptStep(Step):
    """After attribution and diagnosis: every attributed sample's clusters named against the bank, from the
    leave-one-out embeddings attribution leaves on the batch (no model call)."""

    name = "concepts"

    def __init__(self, settings: ConceptSettings, bank: ConceptBank | None = None):
        if not settings.enabled:
            raise UsageError("the concepts step needs a bank (--concepts BANK)")
        self.settings = settings
        self.bank = bank  # resolved before any model loads (the CLI), else in ``start``
        self.ctx: PairContext | None = None
        self.embeddings: torch.Tensor | None = None  # (D, C) the bank in the pair's model space
        self.temperature, self.temperature_source = DEFAULT_LOGIT_SCALE, ""
        self.reason = ""

    def run_settings(self) -> dict[str, Any]:
        return self.settings.as_config()

    def start(self, ctx: PairContext) -> None:
        """Active when an earlier step removes clusters one at a time (CCI, cluster Shapley); embeds the bank."""
        self.ctx, self.active, self.reason, self.embeddings = ctx, False, "", None
        removing = [s for s in ctx.upstream_of(self) if s.active and getattr(s, "carries_leave_one_out", False)]
        if not removing:
            upstream = [s for s in ctx.upstream_of(self) if getattr(s, "method", None)]
            method = getattr(upstream[0], "method", "") if upstream else ""
            self.reason = (
                f"attribution method {method!r} removes no clusters one at a time"
                if upstream and upstream[0].active
                else "no attribution on this pair"
            )
            return
        if self.bank is None:
            data_dir = None if ctx.options is None else ctx.options.data_dir
            self.bank = resolve_bank(str(self.settings.bank), ctx.catalog, data_dir)
        options = ctx.options
        store = (
            None
            if options is None
            else store_for(ctx.model_spec or "", ctx.adapter, options.text_cache, options.precision)
        )
        self.embeddings = self.bank.embed(ctx.adapter, ctx.templates, store, ctx.reporter)
        self.temperature, self.temperature_source = logit_scale(ctx.adapter)
        if self.settings.temperature is not None:
            self.temperature, self.temperature_source = float(self.settings.temperature), "--concepts-temperature"
        self.active = True

    def process(self, batch: Batch) -> list[ConceptRecord]:
        removal = batch.carried(LeaveOneOut)
        if removal is None or self.embeddings is None or self.bank is None:
            return []
        if removal.emb.shape[-1] != self.embeddings.shape[0]:
            raise ValueError(
                f"concept bank {self.bank.name!r} has {self.embeddings.shape[0]}-dimensional embeddings, the model "
                f"{removal.emb.shape[-1]}"
            )
        row_of = {index: r for r, index in enumerate(batch.indices)}
        rows = [row_of[i] for i in removal.indices]
        attributed = [batch.record(i, AttributionRecord) for i in removal.indices]
        named = name_batch(
            removal.emb,
            removal.without,
            removal.valid,
            self.embeddings,
            self.bank.concepts,
            self.settings.top,
            self.temperature,
            [[] if a is None else a.cci.importance for a in attributed],
            [[] if a is None else a.cci.assignments for a in attributed],
            [foreground(batch, r) for r in rows],
        )
        return [self._record(batch, i, r, pairs, k) for i, r, (pairs, k) in zip(removal.indices, rows, named)]

    def _record(self, batch: Batch, index: int, row: int, pairs: list, driving: int | None) -> ConceptRecord:
        diagnosis = batch.record(index, DiagnosisRecord)
        bg_error = None
        if diagnosis is not None and diagnosis.has_mask and not diagnosis.correct:
            bg_error = next(iter(diagnosis.outcomes.values())).error_type == "bg"
        unit = batch.samples.samples[index].meta.get("source_id")
        label, pred = int(batch.labels[row]), batch.pred(row)
        return ConceptRecord(index, label, pred, pairs, driving, bg_error, None if unit is None else str(unit))

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        if not self.active or self.bank is None or self.ctx is None:
            why = self.reason or "not run"
            return StepSummary(config={"status": "off", "reason": why}, notes=[f"--concepts: off ({why})"])
        named = [r for r in records if isinstance(r, ConceptRecord)]
        config = {
            "status": "ran",
            **self.settings.as_config(),
            "bank": self.bank.describe(),
            "temperature": round(self.temperature, 4),
            "temperature_from": self.temperature_source,
            **summarise(named, self.bank.concepts, self.ctx.classnames, seed=self._seed()),
        }
        return StepSummary(config=config)

    def _seed(self) -> int:
        options = None if self.ctx is None else self.ctx.options
        return 0 if options is None else int(options.seed)
