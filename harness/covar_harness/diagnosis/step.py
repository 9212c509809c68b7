"""The diagnosis step of the pipeline (docs/design.md sections 7.5 and 8): after the masks and attribution, in the
same batch loop, it diagnoses every sample from the mask step's and attribution's records of the batch and
summarises BG-Er / Fine-Er into the result.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from covar_harness.attribution.records import AttributionRecord
from covar_harness.diagnosis.fine_rules import SENSITIVITY, FineRelation, parse_fine_rule
from covar_harness.diagnosis.rules import Case, DiagnosisRecord, DiagnosisSettings, Evidence, diagnose_batch
from covar_harness.diagnosis.summary import summarise_pair
from covar_harness.masks.step import MaskRecord, MaskStep, upstream_masks
from covar_harness.pipeline.contract import PairContext, SampleRecord, Step, StepSummary

if TYPE_CHECKING:
    from covar_harness.pipeline.contract import Batch


# ---- the step -------------------------------------------------------------------------------------------------------
class DiagnosisStep(Step):
    """The step after attribution: per sample the driver and error type, from the mask step's and attribution's
    records of the same batch."""

    name = "diagnosis"

    def __init__(self, settings: DiagnosisSettings):
        self.settings = settings
        self.ctx: PairContext | None = None
        self.masks: MaskStep | None = None  # the pair's mask step (before attribution), when it gives masks
        self.fine: FineRelation | None = None  # the --fine-rule resolved for the pair
        self.alternatives: dict[str, FineRelation] = {}  # fine_rules.SENSITIVITY (and the chosen rule) resolved

    def run_settings(self) -> dict[str, Any]:
        return self.settings.as_config()

    def start(self, ctx: PairContext) -> None:
        """Runs when an earlier step attributes this pair and the mask step before it can give masks: asks it for
        them (``MaskStep.request``: the segmenter is built now) and resolves the fine rules."""
        self.ctx, self.active, self.masks, self.fine, self.alternatives = ctx, False, None, None, {}
        masks = upstream_masks(ctx, self)
        attributing = any(step.active for step in ctx.upstream_of(self) if not isinstance(step, MaskStep))
        if masks is None or not masks.available or not attributing:
            return
        masks.request()
        specs = dict.fromkeys([*SENSITIVITY, self.settings.fine_rule])
        self.alternatives = {
            s: parse_fine_rule(s).relation(ctx.task, ctx.classnames, ctx.class_embeddings()) for s in specs
        }
        self.fine = self.alternatives[self.settings.fine_rule]
        self.masks, self.active = masks, True

    def process(self, batch: Batch) -> list[DiagnosisRecord]:
        """Every sample of the batch diagnosed at once (``diagnose_batch``: array operations over the batch)."""
        cases, infos = [], []
        for r, index in enumerate(batch.indices):
            evidence = Evidence.of(batch.record(index, AttributionRecord))  # no record: every rule undetermined
            mask = batch.record(index, MaskRecord)
            sample = batch.samples.samples[index]
            source = sample.meta.get("source_id")
            fg = None if mask is None else mask.fg
            label, pred = int(batch.labels[r]), batch.pred(r)
            cases.append(Case(index, label, pred, evidence, fg, sample.id, None if source is None else str(source)))
            infos.append({} if mask is None else mask.info)
        out = []
        for case, info, record in zip(cases, infos, diagnose_batch(cases, self.fine, self.settings)):
            fine_by_rule = (
                {s: f.fine(case.label, case.pred) for s, f in self.alternatives.items()}
                if case.label != case.pred
                else {}
            )
            out.append(replace(record, segmenter_info=dict(info), fine_by_rule=fine_by_rule))
        return out

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        """BG-Er / Fine-Er into the metrics; a segmenter that failed part-way withdraws the whole diagnosis."""
        if not self.active or self.masks is None:
            return StepSummary()  # no config entry: nothing was diagnosed
        failed = self.masks.failed
        if failed is not None:
            return StepSummary(
                config={"status": "skipped", "reason": failed},
                notes=[f"diagnosis skipped: {failed}"],
                log_records=False,
            )
        diagnosed = [r for r in records if isinstance(r, DiagnosisRecord)]
        fine_records = {s: f.record(parse_fine_rule(s).status) for s, f in self.alternatives.items()}
        result = summarise_pair(diagnosed, self.settings, fine_records, self.masks.describe(), self._headline_target())
        warning = (result.config.get("redundancy") or {}).get("warning")
        notes = [] if warning is None else [warning]
        return StepSummary(metrics=result.metrics, intervals=result.intervals, config=result.config, notes=notes)

    def _headline_target(self) -> str | None:
        """The class ``bg_er`` explains (the attribution step's ``--cci-target``): ``bg_er`` equals ``bg_er_pred``
        or ``bg_er_label``, and a reader of the result must be able to tell which without the attribution config."""
        assert self.ctx is not None
        for step in self.ctx.upstream_of(self):
            target = getattr(getattr(step, "settings", None), "target", None)
            if step.active and isinstance(target, str):
                return target
        return None
