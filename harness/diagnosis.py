"""Diagnosis (docs/design.md sections 7.5 and 8): was a decision driven by the object or by its background, and
what kind of error is each misclassification?

The diagnosis step runs right after attribution in the same batch loop and reads attribution's typed record of
each sample (``AttributionRecord``: cluster assignments and importances, Shapley values, the counterfactual
region test) plus the foreground fraction of each patch. It writes ``fg_fraction``, ``driver`` and ``error_type``
per sample (a :class:`DiagnosisRecord`) and BG-Er / Fine-Er per task. Several driver rules can be reported at
once; the first one is the headline (``--driver-rule``, default ``paper``). :func:`diagnose` does the same on
logged sample rows (dicts read from ``samples.jsonl``).

Rules (:data:`RULES`; a new one is one function with the :func:`rule` decorator)
- ``paper``: fg_fraction = positive importance mass inside the mask / total positive mass (each patch carries
  its cluster's importance I_k, weighted by the patch's foreground fraction); driver = fg if >= threshold.
- ``area``: the same masses divided by the foreground / background areas (importance density), so a small
  object is not called background-driven merely for being small; driver = fg if density_fg >= density_bg.
- ``shapley``: the ``paper`` rule with cluster Shapley values in place of leave-one-out importances.
- ``counterfactual``: the region that alone keeps the decision better: score = 0.5 + (s(foreground only) -
  s(background only)) / 4, a continuous score in [0, 1] (cosines lie in [-1, 1]) that is >= 0.5 exactly when the
  foreground alone is at least as close to the target text; fg if >= 0.5, else bg (``counterfactual`` records
  from the region test). Continuous so that rankings (AUROC in ``covar-harness sanity``) are meaningful.

With several rules, each sample also gets ``scores`` {rule: score} next to ``drivers`` {rule: driver}. numpy is
imported inside the functions, so the CLI can read :class:`DiagnosisSettings` for its flags without it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from covar_harness.class_groups import share_group
from covar_harness.flags import flag
from covar_harness.pipeline import PairContext, SampleRecord, Step, StepSummary

if TYPE_CHECKING:
    import numpy as np

    from covar_harness.attribution.records import AttributionRecord
    from covar_harness.pipeline import Batch

ERROR_TYPES = ("bg", "fine", "other")


@dataclass
class DiagnosisSettings:
    """The diagnosis knobs: the one source of the ``--driver-rule`` / ``--fg-threshold`` defaults and help."""

    rules: tuple[str, ...] = field(
        default=("paper",),
        metadata=flag(
            "--driver-rule",
            "comma-separated: paper, area, shapley, counterfactual; the first is the headline",
            to_cli=",".join,
        ),
    )
    # fg_fraction >= threshold -> fg (paper and shapley rules)
    threshold: float = field(
        default=0.5,
        metadata=flag("--fg-threshold", "fg_fraction at or above which a decision is foreground-driven", type=float),
    )
    fine_rule: str = "shared class group"  # recorded in the result
    bootstrap: int = 1000
    seed: int = 0
    # the null of every importance-reading rule: each sample's cluster values permuted over its own clusters,
    # this many draws (seeded from ``seed`` and the sample id); 0 turns the null off
    null_draws: int = field(
        default=20,
        metadata=flag("--null-draws", "permutation draws of the diagnosis null per sample (0: no null)", type=int),
    )

    def as_config(self) -> dict[str, Any]:
        return {
            "rules": list(self.rules),
            "threshold": self.threshold,
            "fine_rule": self.fine_rule,
            "null_draws": self.null_draws,
            "null": NULL_DESCRIPTION,
        }


NULL_DESCRIPTION = (
    "the same rule with the sample's cluster values (importances, or Shapley values for the shapley rule) "
    "permuted over its non-empty clusters; rules that read no importances (counterfactual) have no null"
)


# ---- rules ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evidence:
    """What the rules read of one sample's attribution: clusters, their importances, Shapley values and the
    region test's similarities. None where the attributor did not produce it."""

    assignments: Sequence[int] | None = None
    importance: Sequence[float] | None = None
    shapley: Sequence[float] | None = None
    s_fg_only: float | None = None
    s_bg_only: float | None = None
    # importances per explained target ("pred", "label"), when the record holds both (``importance_label`` or
    # ``importance_pred`` beside ``importance``)
    by_target: dict[str, Sequence[float]] | None = None

    @classmethod
    def of(cls, record: AttributionRecord | None) -> Evidence:
        """From attribution's typed record (what the diagnosis step reads)."""
        if record is None:
            return cls()
        cf = record.counterfactual
        return cls(
            record.cci.assignments,
            record.cci.importance,
            None if record.shapley is None else record.shapley.values,
            None if cf is None else cf.s_fg_only,
            None if cf is None else cf.s_bg_only,
            _by_target(record.cci.importance, record.cci.importance_label, record.cci.importance_pred),
        )

    @classmethod
    def of_row(cls, row: dict) -> Evidence:
        """From a logged sample row (``samples.jsonl``) or an older-contract step's dict record."""
        cci, sh, cf = row.get("cci") or {}, row.get("shapley") or {}, row.get("counterfactual") or {}
        return cls(
            cci.get("assignments"),
            cci.get("importance"),
            sh.get("values"),
            cf.get("s_fg_only"),
            cf.get("s_bg_only"),
            _by_target(cci.get("importance"), cci.get("importance_label"), cci.get("importance_pred")),
        )


def _by_target(
    importance: Sequence[float] | None, label: Sequence[float] | None, pred: Sequence[float] | None
) -> dict[str, Sequence[float]] | None:
    """{"pred": ..., "label": ...}: ``importance`` explains the target the other field is not."""
    if importance is None or (label is None) == (pred is None):
        return None
    if label is not None:
        return {"pred": importance, "label": label}
    assert pred is not None
    return {"pred": pred, "label": importance}


@dataclass(frozen=True)
class Rule:
    """A driver rule: ``score`` (higher = more foreground-driven; None = undetermined) and the threshold that
    calls fg: ``--fg-threshold`` when ``uses_threshold``, else 0.5 (where the score is symmetric)."""

    name: str
    score: Callable[[Evidence, np.ndarray], float | None]
    uses_threshold: bool = False
    null_field: str | None = None  # the Evidence field of per-cluster values the null permutes; None: no null

    def threshold(self, settings: DiagnosisSettings) -> float:
        return settings.threshold if self.uses_threshold else 0.5


RULES: dict[str, Rule] = {}  # name -> rule, in registration order (``--driver-rule`` accepts these)


def rule(name: str, *, uses_threshold: bool = False, null_field: str | None = None) -> Callable[[Callable], Callable]:
    """Register ``fn(evidence, fg) -> score | None`` as driver rule ``name``; ``fg`` is the (N,) foreground
    fraction per patch in raster order. ``null_field`` names the Evidence field of per-cluster values the rule
    reads ("importance", "shapley"): its null permutes them; the rule is also scored per explained target when
    it reads "importance"."""

    def register(fn: Callable[[Evidence, np.ndarray], float | None]) -> Callable:
        RULES[name] = Rule(name, fn, uses_threshold, null_field)
        return fn

    return register


def _patch_values(assignments: Sequence[int], values: Sequence[float]) -> np.ndarray:
    """Per-patch values from per-cluster values (a cluster id with no value counts 0)."""
    import numpy as np

    vals = np.asarray(values, dtype=np.float64)
    assign = np.asarray(assignments, dtype=np.int64)
    return np.where(assign < len(vals), vals[np.minimum(assign, len(vals) - 1)], 0.0)


def fg_fraction(patch_importance: np.ndarray, fg: np.ndarray) -> float | None:
    """Positive importance mass inside the foreground / total positive mass; None when nothing is positive."""
    import numpy as np

    pos = np.clip(patch_importance, 0.0, None)
    total = pos.sum()
    return None if total <= 0 else float((pos * fg).sum() / total)


def density_ratio(patch_importance: np.ndarray, fg: np.ndarray) -> float | None:
    """Share of positive importance *density* that is foreground: d_fg / (d_fg + d_bg), in [0, 1]."""
    import numpy as np

    pos = np.clip(patch_importance, 0.0, None)
    area_fg, area_bg = fg.sum(), (1 - fg).sum()
    if pos.sum() <= 0 or area_fg <= 0 or area_bg <= 0:
        return None
    d_fg, d_bg = (pos * fg).sum() / area_fg, (pos * (1 - fg)).sum() / area_bg
    return float(d_fg / (d_fg + d_bg))


@rule("paper", uses_threshold=True, null_field="importance")
def _score_paper(ev: Evidence, fg: np.ndarray) -> float | None:
    if ev.assignments is None or ev.importance is None:
        return None
    return fg_fraction(_patch_values(ev.assignments, ev.importance), fg)


@rule("area", null_field="importance")
def _score_area(ev: Evidence, fg: np.ndarray) -> float | None:
    if ev.assignments is None or ev.importance is None:
        return None
    return density_ratio(_patch_values(ev.assignments, ev.importance), fg)


@rule("shapley", uses_threshold=True, null_field="shapley")
def _score_shapley(ev: Evidence, fg: np.ndarray) -> float | None:
    if ev.assignments is None or ev.shapley is None:
        return None
    return fg_fraction(_patch_values(ev.assignments, ev.shapley), fg)


@rule("counterfactual")
def _score_counterfactual(ev: Evidence, fg: np.ndarray) -> float | None:
    if ev.s_fg_only is None or ev.s_bg_only is None:
        return None
    return 0.5 + (ev.s_fg_only - ev.s_bg_only) / 4.0


# ---- per sample -------------------------------------------------------------------------------------------------
def error_type(correct: bool, driver: str | None, fine: bool) -> str | None:
    if correct:
        return None
    if driver == "bg":
        return "bg"
    if driver == "fg" and fine:
        return "fine"
    return "other"


@dataclass(frozen=True)
class RuleOutcome:
    score: float | None  # the rule's fg-score; None: undetermined
    driver: str | None  # fg | bg | None
    error_type: str | None  # bg | fine | other for an error with a mask; None otherwise
    null_fg: float | None = None  # share of the null's draws that call fg; None: no null or undetermined
    by_target: dict[str, RuleOutcome] | None = None  # the rule per explained target ("pred", "label")


@dataclass(frozen=True, eq=False)
class DiagnosisRecord(SampleRecord):
    """One sample's diagnosis under every rule (in ``--driver-rule`` order; the first is the headline)."""

    index: int
    correct: bool
    has_mask: bool
    outcomes: dict[str, RuleOutcome]
    area: float | None = None  # the object's share of the patch grid (mean foreground fraction); None: no mask
    cluster: str | None = None  # the sample's source object (``source_id``), the bootstrap's unit when known
    fine: bool = False  # label and prediction share a class group (a fine-grained confusion if an error)
    segmenter_info: dict[str, Any] = field(default_factory=dict)  # what the segmenter said, e.g. {"n_boxes": 2}

    def log_fields(self) -> dict[str, Any]:
        head = next(iter(self.outcomes.values()))
        out: dict[str, Any] = {"fg_fraction": head.score, "driver": head.driver}
        if not self.correct:
            out["error_type"] = head.error_type
        if len(self.outcomes) > 1:
            out["drivers"] = {name: o.driver for name, o in self.outcomes.items()}
            out["scores"] = {name: o.score for name, o in self.outcomes.items()}
        out.update(self.segmenter_info)  # logged only when a segmenter reported something (GroundedSAM: n_boxes)
        return out


def diagnose_sample(
    index: int,
    label: int,
    pred: int,
    evidence: Evidence,
    fg: np.ndarray | None,
    groups: dict[int, Any] | None,
    settings: DiagnosisSettings,
    sample_id: str | None = None,
    cluster: str | None = None,
) -> DiagnosisRecord:
    """Driver and error type of one sample under each rule. Without a mask (``fg`` None) nothing is decided.
    ``sample_id`` seeds the null's draws (default: the index), ``cluster`` is the bootstrap unit."""
    correct = label == pred
    fine = share_group(groups, label, pred)
    outcomes = {}
    for name in settings.rules:
        rule_ = RULES[name]
        outcome = _outcome(rule_, evidence, fg, correct, fine, settings)
        if fg is not None and rule_.null_field == "importance" and evidence.by_target is not None:
            by_target = {
                t: _outcome(rule_, replace(evidence, importance=v), fg, correct, fine, settings)
                for t, v in evidence.by_target.items()
            }
            outcome = replace(outcome, by_target=by_target)
        if fg is not None and outcome.driver is not None:
            seed = _null_seed(settings.seed, str(index) if sample_id is None else sample_id)
            outcome = replace(outcome, null_fg=null_fg_share(rule_, evidence, fg, settings, seed))
        outcomes[name] = outcome
    area = None if fg is None else float(fg.mean())
    return DiagnosisRecord(index, correct, fg is not None, outcomes, area, cluster, fine)


def _outcome(
    rule_: Rule, evidence: Evidence, fg: np.ndarray | None, correct: bool, fine: bool, settings: DiagnosisSettings
) -> RuleOutcome:
    score = None if fg is None else rule_.score(evidence, fg)
    driver = None if score is None else ("fg" if score >= rule_.threshold(settings) else "bg")
    return RuleOutcome(score, driver, error_type(correct, driver, fine) if fg is not None else None)


def _null_seed(seed: int, sample_id: str) -> int:
    """The null's seed of one sample: the run seed and the sample id (the same draws whatever the batch)."""
    return (seed * 0x9E3779B1 + zlib.crc32(b"null:" + sample_id.encode("utf-8"))) % (2**63 - 1)


def null_fg_share(
    rule_: Rule, evidence: Evidence, fg: np.ndarray, settings: DiagnosisSettings, seed: int
) -> float | None:
    """Share of ``settings.null_draws`` draws in which the rule calls fg when the sample's per-cluster values
    are permuted over its non-empty clusters. Why this null: it keeps the clusters (their sizes and their
    overlap with the object) and the multiset of importances, and breaks only which cluster got which value,
    so a rule's share that merely follows object size or cluster layout shows up in the null as well."""
    import numpy as np

    name = rule_.null_field
    values = None if name is None else getattr(evidence, name)
    if name is None or values is None or evidence.assignments is None or settings.null_draws <= 0:
        return None
    vals = np.asarray(values, dtype=np.float64)
    present = np.unique(np.asarray(evidence.assignments, dtype=np.int64))
    present = present[present < len(vals)]
    rng = np.random.default_rng(seed)
    threshold, fg_calls, decided = rule_.threshold(settings), 0, 0
    for _ in range(settings.null_draws):
        drawn = vals.copy()
        drawn[present] = vals[present][rng.permutation(len(present))]
        score = rule_.score(replace(evidence, **{name: drawn.tolist()}), fg)
        if score is not None:
            decided += 1
            fg_calls += score >= threshold
    return None if decided == 0 else fg_calls / decided


# ---- per task -----------------------------------------------------------------------------------------------------
@dataclass
class Diagnosis:
    per_sample: dict[int, dict] = field(default_factory=dict)  # index -> fields to merge into the sample log
    metrics: dict[str, float | None] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    by_rule: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


HEADLINE_EXTRAS = (
    "bg_er_null",
    "bg_er_minus_null",
    "fine_er_null",
    "fg_driven_rate_null",
    "bg_er_pred",
    "bg_er_label",
    "fine_er_pred",
    "fine_er_label",
)  # headline-rule metrics beside fg_driven_rate / bg_er / fine_er, present where the rule defines them


def summarise(records: list[DiagnosisRecord], settings: DiagnosisSettings, has_groups: bool) -> Diagnosis:
    """BG-Er / Fine-Er as shares of misclassified samples, per rule. Samples without a mask or without the
    records a rule needs are left out of that rule's rates (counted as ``n_undetermined``). Beside them: the
    rule's null, the rates per explained target, and the counts behind each share."""
    out = Diagnosis(
        per_sample={r.index: r.log_fields() for r in records},
        config={**settings.as_config(), "fine_grained_groups": has_groups},
    )
    clustered = bool(records) and all(r.cluster is not None for r in records)
    out.config["bootstrap_unit"] = "source_id" if clustered else "sample"
    for r_i, name in enumerate(settings.rules):
        outcomes = [(r, r.outcomes[name]) for r in records]
        decided = [(r, o) for r, o in outcomes if o.driver is not None]
        errors = [(r, o) for r, o in outcomes if not r.correct and r.has_mask]
        summary = _rates(
            [o.driver == "fg" for _, o in decided],
            [o.error_type for _, o in errors],
            settings,
            [r.cluster for r, _ in decided] if clustered else None,
            [r.cluster for r, _ in errors] if clustered else None,
        )
        summary["n_undetermined"] = len(records) - len(decided)
        summary.update(_counts(records, errors))
        intervals = summary.pop("intervals")
        for extra in (
            _null_rates(RULES[name], decided, errors, settings, clustered),
            _target_rates(errors, settings, clustered),
        ):
            intervals.update(extra.pop("intervals"))
            summary.update(extra)
        out.by_rule[name] = {**summary, "intervals": intervals}
        if r_i == 0:
            out.metrics = {k: summary[k] for k in ("fg_driven_rate", "bg_er", "fine_er")}
            out.metrics.update({k: summary[k] for k in HEADLINE_EXTRAS if k in summary})
            out.intervals = dict(intervals)  # bg_er_minus_null's interval is signed: validation allows [-1, 1]
    return out


def _counts(records: list[DiagnosisRecord], errors: list[tuple[DiagnosisRecord, RuleOutcome]]) -> dict[str, Any]:
    """The counts behind the shares, and the object size of the errors: why a share is what it is (a rule that
    calls small objects background-driven shows up as errors with a small mean area)."""
    areas = [r.area for r, _ in errors if r.area is not None]
    return {
        "n_errors_undetermined": sum(o.driver is None for _, o in errors),
        "n_errors_without_mask": sum(not r.correct and not r.has_mask for r in records),
        "errors_mean_area": sum(areas) / len(areas) if areas else None,
    }


def _interval(values: Any, settings: DiagnosisSettings, clusters: list[str | None] | None) -> list[float] | None:
    from covar_harness.metrics import bootstrap_interval

    if not len(values):
        return None
    return list(bootstrap_interval(values, n_boot=settings.bootstrap, seed=settings.seed, clusters=clusters))


def _rates(
    drivers: list[bool],
    errors: list[str | None],
    settings: DiagnosisSettings,
    driver_clusters: list[str | None] | None = None,
    error_clusters: list[str | None] | None = None,
) -> dict[str, Any]:
    import numpy as np

    fg = np.asarray(drivers, dtype=float)
    bg_err = np.asarray([e == "bg" for e in errors], dtype=float)
    fine_err = np.asarray([e == "fine" for e in errors], dtype=float)
    out: dict[str, Any] = {
        "fg_driven_rate": float(fg.mean()) if len(fg) else None,
        "bg_er": float(bg_err.mean()) if len(bg_err) else None,
        "fine_er": float(fine_err.mean()) if len(fine_err) else None,
        "n_attributed": len(drivers),
        "n_errors": len(errors),
        "intervals": {},
    }
    for key, values, clusters in (
        ("fg_driven_rate", fg, driver_clusters),
        ("bg_er", bg_err, error_clusters),
        ("fine_er", fine_err, error_clusters),
    ):
        if len(values):
            out["intervals"][key] = _interval(values, settings, clusters)
    return out


def _null_rates(
    rule_: Rule,
    decided: list[tuple[DiagnosisRecord, RuleOutcome]],
    errors: list[tuple[DiagnosisRecord, RuleOutcome]],
    settings: DiagnosisSettings,
    clustered: bool,
) -> dict[str, Any]:
    """The rule's null (expected shares when each sample's cluster values are permuted) and BG-Er minus it.
    An error the rule leaves undetermined is undetermined under the null too (permuting keeps whether any value
    is positive), so both shares have the same denominator and the difference is a per-error paired one."""
    import numpy as np

    if rule_.null_field is None or settings.null_draws <= 0:
        return {"null": "none: the rule reads no cluster importances", "intervals": {}}
    fg_null = np.asarray([o.null_fg or 0.0 for _, o in decided], dtype=float)
    bg_null = np.asarray([0.0 if o.null_fg is None else 1.0 - o.null_fg for _, o in errors], dtype=float)
    fine_null = np.asarray([(o.null_fg or 0.0) * r.fine for r, o in errors], dtype=float)
    diff = np.asarray([o.error_type == "bg" for _, o in errors], dtype=float) - bg_null
    out: dict[str, Any] = {
        "fg_driven_rate_null": float(fg_null.mean()) if len(fg_null) else None,
        "bg_er_null": float(bg_null.mean()) if len(bg_null) else None,
        "fine_er_null": float(fine_null.mean()) if len(fine_null) else None,
        "bg_er_minus_null": float(diff.mean()) if len(diff) else None,
        "intervals": {},
    }
    err_clusters = [r.cluster for r, _ in errors] if clustered else None
    for key, values in (("bg_er_null", bg_null), ("bg_er_minus_null", diff)):
        if len(values):
            out["intervals"][key] = _interval(values, settings, err_clusters)
    return out


def _target_rates(
    errors: list[tuple[DiagnosisRecord, RuleOutcome]], settings: DiagnosisSettings, clustered: bool
) -> dict[str, Any]:
    """BG-Er / Fine-Er with the prediction and with the label explained (``bg_er_pred``, ``bg_er_label``, ...),
    where every error's record holds both targets; an error undetermined under a target counts as ``other``."""
    import numpy as np

    out: dict[str, Any] = {"intervals": {}}
    if not errors or any(o.by_target is None for _, o in errors):
        return out
    clusters = [r.cluster for r, _ in errors] if clustered else None
    for target in ("pred", "label"):
        kinds = [o.by_target[target].error_type for _, o in errors if o.by_target is not None]
        for metric, kind in (("bg_er", "bg"), ("fine_er", "fine")):
            values = np.asarray([k == kind for k in kinds], dtype=float)
            out[f"{metric}_{target}"] = float(values.mean())
            out["intervals"][f"{metric}_{target}"] = _interval(values, settings, clusters)
    return out


def diagnose(
    rows: list[dict], fg_grids: dict[int, np.ndarray], groups: dict[int, Any] | None, settings: DiagnosisSettings
) -> Diagnosis:
    """:func:`diagnose_sample` and :func:`summarise` over logged sample rows (index, label, pred, and the
    attribution entries ``cci`` / ``shapley`` / ``counterfactual``). ``fg_grids``: index -> (rows*cols,)
    foreground fraction per patch, raster order."""
    records = [
        diagnose_sample(
            row["index"],
            row["label"],
            row["pred"],
            Evidence.of_row(row),
            fg_grids.get(row["index"]),
            groups,
            settings,
            row.get("id"),
            row.get("source_id"),
        )
        for row in rows
    ]
    return summarise(records, settings, groups is not None)


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
        self.groups: dict[int, Any] | None = None

    def run_settings(self) -> dict[str, Any]:
        return {**self.settings.as_config(), "segmenter": self.segmenter, "segmenter_settings": self.segmenter_settings}

    def start(self, ctx: PairContext) -> None:
        """Runs when an earlier step attributes this pair and masks can be had: builds them into ``ctx.masks``
        (the batch loop reads them; attribution's region test too)."""
        from covar_harness.adapter import attribution_support

        self.ctx, self.active, self.groups = ctx, False, None
        attributing = any(step.active for step in ctx.upstream_of(self))
        if self.segmenter == "none" or not attributing or not attribution_support(ctx.adapter)[0]:
            return
        from covar_harness.class_groups import class_groups
        from covar_harness.segmentation import PatchMasks, choose_segmenter

        segmenter = choose_segmenter(self.segmenter, ctx.samples, ctx.catalog, self.segmenter_settings)
        ctx.masks = PatchMasks(segmenter, ctx.samples, ctx.classnames, ctx.adapter.preprocess, ctx.adapter.patch_grid)
        self.groups = class_groups(ctx.task, ctx.classnames)
        self.active = True

    def process(self, batch: Batch) -> list[DiagnosisRecord]:
        from covar_harness.attribution.records import AttributionRecord

        out = []
        for r, index in enumerate(batch.indices):
            typed = batch.record(index, AttributionRecord)
            evidence = Evidence.of(typed) if typed is not None else Evidence.of_row(batch.legacy_fields(index))
            fg = None if batch.fg is None else batch.fg[r]
            sample = batch.samples.samples[index]
            source = sample.meta.get("source_id")
            record = diagnose_sample(
                index,
                int(batch.labels[r]),
                batch.pred(r),
                evidence,
                fg,
                self.groups,
                self.settings,
                sample.id,
                None if source is None else str(source),
            )
            info = self.ctx.masks.sample_info(index) if self.ctx is not None and self.ctx.masks is not None else {}
            out.append(replace(record, segmenter_info=dict(info)) if info else record)
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
        from covar_harness.class_groups import class_groups_rule

        result = summarise(
            [r for r in records if isinstance(r, DiagnosisRecord)], self.settings, self.groups is not None
        )
        config = {
            **result.config,
            "fine_rule": class_groups_rule(self.ctx.task, self.ctx.classnames),
            "segmenter": masks.describe(),
            "headline_target": self._headline_target(),
            "by_rule": result.by_rule,
        }
        return StepSummary(metrics=result.metrics, intervals=result.intervals, config=config)

    def _headline_target(self) -> str | None:
        """The class ``bg_er`` explains (the attribution step's ``--cci-target``): ``bg_er`` equals ``bg_er_pred``
        or ``bg_er_label``, and a reader of the result must be able to tell which without the attribution config."""
        assert self.ctx is not None
        for step in self.ctx.upstream_of(self):
            target = getattr(getattr(step, "settings", None), "target", None)
            if step.active and isinstance(target, str):
                return target
        return None
