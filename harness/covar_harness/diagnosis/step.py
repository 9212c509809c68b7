"""The diagnosis step of the pipeline (docs/design.md sections 7.5 and 8): after attribution, in the same batch
loop, it builds the foreground masks on the patch grid (the segmenter), diagnoses every sample from
attribution's record and summarises BG-Er / Fine-Er into the result.

``DiagnosisStep`` is re-exported by ``covar_harness.diagnosis.rules`` (the plugin contract), so this module imports the
diagnosis modules only inside its methods (no import cycle at module load).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from covar_harness.attribution.records import AttributionRecord
from covar_harness.diagnosis.fine_rules import SENSITIVITY, parse_fine_rule
from covar_harness.diagnosis.rules import Case, DiagnosisRecord, Evidence, diagnose_batch
from covar_harness.diagnosis.summary import summarise_pair
from covar_harness.masks.patch_masks import PatchMasks
from covar_harness.masks.segmenter import choose_segmenter
from covar_harness.models.adapter import attribution_support
from covar_harness.pipeline.contract import PairContext, SampleRecord, Step, StepSummary

if TYPE_CHECKING:
    from covar_harness.diagnosis.fine_rules import FineRelation
    from covar_harness.diagnosis.rules import DiagnosisRecord, DiagnosisSettings
    from covar_harness.pipeline.contract import Batch


# ---- the step -------------------------------------------------------------------------------------------------------
class DiagnosisStep(Step):
    """The step after attribution: foreground masks on the patch grid (the segmenter), then per sample the
    driver and error type from attribution's record of the same batch."""

    name = "diagnosis"

    def __init__(
        self, settings: DiagnosisSettings, segmenter: str = "auto", segmenter_settings: dict[str, Any] | None = None
    ):
        self.settings, self.segmenter = settings, segmenter
        self.segmenter_settings = dict(segmenter_settings or {})
        self.ctx: PairContext | None = None
        self.fine: FineRelation | None = None  # the --fine-rule resolved for the pair
        self.alternatives: dict[str, FineRelation] = {}  # fine_rules.SENSITIVITY (and the chosen rule) resolved

    def run_settings(self) -> dict[str, Any]:
        return {**self.settings.as_config(), "segmenter": self.segmenter, "segmenter_settings": self.segmenter_settings}

    def start(self, ctx: PairContext) -> None:
        """Runs when an earlier step attributes this pair and masks can be had: builds them into ``ctx.masks``
        (the batch loop reads them; attribution's region test too)."""

        self.ctx, self.active, self.fine, self.alternatives = ctx, False, None, {}
        attributing = any(step.active for step in ctx.upstream_of(self))
        if self.segmenter == "none" or not attributing or not attribution_support(ctx.adapter)[0]:
            return

        assert ctx.catalog is not None  # the evaluator opens every pair with its catalog
        segmenter = choose_segmenter(self.segmenter, ctx.samples, ctx.catalog, self.segmenter_settings)
        ctx.masks = PatchMasks(segmenter, ctx.samples, ctx.classnames, ctx.adapter.preprocess, ctx.adapter.patch_grid)
        specs = dict.fromkeys([*SENSITIVITY, self.settings.fine_rule])
        self.alternatives = {
            s: parse_fine_rule(s).relation(ctx.task, ctx.classnames, ctx.class_embeddings()) for s in specs
        }
        self.fine = self.alternatives[self.settings.fine_rule]
        self.active = True

    def process(self, batch: Batch) -> list[DiagnosisRecord]:
        """Every sample of the batch diagnosed at once (``diagnose_batch``: array operations over the batch)."""

        cases = []
        for r, index in enumerate(batch.indices):
            typed = batch.record(index, AttributionRecord)
            evidence = Evidence.of(typed)  # no record (not attributed): every rule is undetermined
            sample = batch.samples.samples[index]
            source = sample.meta.get("source_id")
            fg = None if batch.fg is None else batch.fg[r]
            label, pred = int(batch.labels[r]), batch.pred(r)
            cases.append(Case(index, label, pred, evidence, fg, sample.id, None if source is None else str(source)))
        masks = self.ctx.masks if self.ctx is not None else None
        out = []
        for case, record in zip(cases, diagnose_batch(cases, self.fine, self.settings)):
            info = masks.sample_info(case.index) if masks is not None else {}
            fine_by_rule = (
                {s: f.fine(case.label, case.pred) for s, f in self.alternatives.items()}
                if case.label != case.pred
                else {}
            )
            out.append(replace(record, segmenter_info=dict(info), fine_by_rule=fine_by_rule))
        return out

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        """BG-Er / Fine-Er into the metrics; a segmenter that failed part-way withdraws the whole diagnosis."""
        if not self.active or self.ctx is None or self.ctx.masks is None:
            return StepSummary()  # no config entry: nothing was diagnosed
        masks = self.ctx.masks
        if masks.failed is not None:
            return StepSummary(
                config={"status": "skipped", "reason": masks.failed},
                notes=[f"diagnosis skipped: {masks.failed}"],
                log_records=False,
            )

        diagnosed = [r for r in records if isinstance(r, DiagnosisRecord)]
        fine_records = {s: f.record(parse_fine_rule(s).status) for s, f in self.alternatives.items()}
        result = summarise_pair(diagnosed, self.settings, fine_records, masks.describe(), self._headline_target())
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
