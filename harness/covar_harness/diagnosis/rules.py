"""Diagnosis (docs/design.md sections 7.5 and 8): was a decision driven by the object or by its background, and
what kind of error is each misclassification?

The diagnosis step runs right after attribution in the same batch loop and reads attribution's typed record of
each sample (``AttributionRecord``: cluster assignments and importances, Shapley values, the counterfactual
region test) plus the foreground fraction of each patch. It writes ``fg_fraction``, ``driver`` and ``error_type``
per sample (a :class:`DiagnosisRecord`) and BG-Er / Fine-Er per task. Several driver rules can be reported at
once; the first one is the headline (``--driver-rule``, default ``paper``).

This module holds the settings, the rules registry and the rules, and the per-sample diagnosis (with its null).
The per-task summaries (BG-Er / Fine-Er, the null's rates, intervals) and :func:`diagnose` over logged sample
rows (dicts read from ``samples.jsonl``) are in ``diagnosis_summary``; the pipeline step is in ``diagnosis_step``.

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

With several rules, each sample also gets ``scores`` {rule: score} next to ``drivers`` {rule: driver}.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from covar_harness.common.flags import flag
from covar_harness.diagnosis.arrays import (
    BlockSet,
    PatchScore,
    blocks,
    density_ratios,
    fg_fractions,
    grid_means,
    null_columns,
    null_counts,
    null_orders,
    patch_index,
    patch_values,
    present_clusters,
    value_table,
)
from covar_harness.diagnosis.fine_rules import DEFAULT as DEFAULT_FINE_RULE
from covar_harness.diagnosis.fine_rules import LEGACY_DEFAULT_SETTING, is_fine, parse_fine_rule
from covar_harness.pipeline.contract import SampleRecord

if TYPE_CHECKING:
    import numpy as np

    from covar_harness.attribution.records import AttributionRecord
    from covar_harness.diagnosis.fine_rules import FineRelation

ERROR_TYPES = ("bg", "fine", "other")


@dataclass
class DiagnosisSettings:
    """The diagnosis knobs: the one source of the ``--driver-rule`` / ``--fg-threshold`` defaults and help."""

    # area first (the headline): the sanity suite's evidence (docs/design.md section 8); paper (inferred) beside it
    rules: tuple[str, ...] = field(
        default=("area", "paper"),
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
    # when an error is fine-grained (fine_rules.py); checked and written canonically in __post_init__
    fine_rule: str = field(
        default="groups",
        metadata=flag(
            "--fine-rule",
            "when an error is fine-grained: groups (the task's class_groups; inferred), wordnet-cap:N, "
            "wordnet-lca:D, text-neighbours:K",
        ),
    )
    bootstrap: int = 1000
    seed: int = 0
    # the null of every importance-reading rule: each sample's cluster values permuted over its own clusters,
    # this many draws (seeded from ``seed`` and the sample id); 0 turns the null off
    null_draws: int = field(
        default=20,
        metadata=flag("--null-draws", "permutation draws of the diagnosis null per sample (0: no null)", type=int),
    )

    def __post_init__(self) -> None:
        self.fine_rule = parse_fine_rule(self.fine_rule).spec  # a bad value: UsageError here, not mid-run

    def as_config(self) -> dict[str, Any]:
        return {
            "rules": list(self.rules),
            "threshold": self.threshold,
            "fine_rule": LEGACY_DEFAULT_SETTING if self.fine_rule == DEFAULT_FINE_RULE else self.fine_rule,
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
    # the region test's predictions over the task's classes with only the foreground / only the background kept
    # (the counterfactual truth beside every BG-Er: does the decision survive removing the object?)
    pred_fg_only: int | None = None
    pred_bg_only: int | None = None
    # the share of the target's drop the single-cluster drops explain (the region test's ``additive_share``):
    # low when the evidence is redundant across clusters, which leave-one-out cannot see
    additive_share: float | None = None

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
            None if cf is None else cf.pred_fg_only,
            None if cf is None else cf.pred_bg_only,
            None if cf is None else cf.additive_share,
        )

    @classmethod
    def of_row(cls, row: dict) -> Evidence:
        """From a logged sample row (``samples.jsonl``): ``diagnose`` over a finished run's log."""
        cci, sh, cf = row.get("cci") or {}, row.get("shapley") or {}, row.get("counterfactual") or {}
        return cls(
            cci.get("assignments"),
            cci.get("importance"),
            sh.get("values"),
            cf.get("s_fg_only"),
            cf.get("s_bg_only"),
            _by_target(cci.get("importance"), cci.get("importance_label"), cci.get("importance_pred")),
            cf.get("pred_fg_only"),
            cf.get("pred_bg_only"),
            cf.get("additive_share"),
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
    calls fg: ``--fg-threshold`` when ``uses_threshold``, else 0.5 (where the score is symmetric).
    ``on_patches``: the same score over arrays of patch values (rules registered with :func:`patch_rule`),
    which the diagnosis uses to score a whole batch and every draw of its null at once."""

    name: str
    score: Callable[[Evidence, np.ndarray], float | None]
    uses_threshold: bool = False
    null_field: str | None = None  # the Evidence field of per-cluster values the null permutes; None: no null
    on_patches: PatchScore | None = None
    inferred: bool = False  # reconstructed from the paper's text (its exact rule is not published)

    def threshold(self, settings: DiagnosisSettings) -> float:
        return settings.threshold if self.uses_threshold else 0.5

    @property
    def label(self) -> str:
        """What the rule is, for every table header: "area, harness rule", "paper rule, inferred"."""
        return f"{self.name} rule, inferred" if self.inferred else f"{self.name}, harness rule"


RULES: dict[str, Rule] = {}  # name -> rule, in registration order (``--driver-rule`` accepts these)


def rule(
    name: str, *, uses_threshold: bool = False, null_field: str | None = None, inferred: bool = False
) -> Callable[[Callable], Callable]:
    """Register ``fn(evidence, fg) -> score | None`` as driver rule ``name``; ``fg`` is the (N,) foreground
    fraction per patch in raster order. ``null_field`` names the Evidence field of per-cluster values the rule
    reads ("importance", "shapley"): its null permutes them; the rule is also scored per explained target when
    it reads "importance". Such a rule is called once per sample (and per draw of its null); a rule that is a
    function of the patch values is faster registered with :func:`patch_rule`. ``inferred``: a reconstruction
    of the paper's rule, labelled so wherever it is shown."""

    def register(fn: Callable[[Evidence, np.ndarray], float | None]) -> Callable:
        RULES[name] = Rule(name, fn, uses_threshold, null_field, inferred=inferred)
        return fn

    return register


def titled(metric: str, rule_name: str | None) -> str:
    """A diagnosis metric's column title naming the rule behind it: ``titled("BG-Er", "area")`` is
    "BG-Er (area, harness rule)". Why: the harness's rules and the paper's (unknown) rule measure different
    things, so a bare "BG-Er" column would put them side by side as if they were one quantity."""
    if rule_name is None:
        return f"{metric} (rule not recorded)"
    known = RULES.get(rule_name)
    return f"{metric} ({known.label if known is not None else f'{rule_name} rule'})"


def patch_rule(
    name: str, field: str, *, uses_threshold: bool = False, inferred: bool = False
) -> Callable[[PatchScore], PatchScore]:
    """Register ``fn(patch_values, fg) -> (scores, decided)`` as driver rule ``name`` reading the per-cluster
    values of Evidence field ``field`` ("importance", "shapley"), each patch carrying its cluster's value.
    ``fn`` works on (..., N) arrays and reduces the last axis (``arrays.fg_fractions`` is one), so the diagnosis
    scores every sample of a batch and every draw of the null in one call; the null permutes ``field``."""

    def register(fn: PatchScore) -> PatchScore:
        def score(ev: Evidence, fg: np.ndarray) -> float | None:
            values = getattr(ev, field)
            if ev.assignments is None or values is None:
                return None
            share, decided = fn(patch_values(ev.assignments, values), np.asarray(fg))
            return float(share) if bool(decided) else None

        RULES[name] = Rule(name, score, uses_threshold, field, fn, inferred=inferred)
        return fn

    return register


def fg_fraction(patch_importance: np.ndarray, fg: np.ndarray) -> float | None:
    """Positive importance mass inside the foreground / total positive mass; None when nothing is positive."""
    share, decided = fg_fractions(patch_importance, fg)
    return float(share) if bool(decided) else None


def density_ratio(patch_importance: np.ndarray, fg: np.ndarray) -> float | None:
    """Share of positive importance *density* that is foreground: d_fg / (d_fg + d_bg), in [0, 1]."""
    ratio, decided = density_ratios(patch_importance, fg)
    return float(ratio) if bool(decided) else None


patch_rule("paper", "importance", uses_threshold=True, inferred=True)(fg_fractions)
patch_rule("area", "importance")(density_ratios)
patch_rule("shapley", "shapley", uses_threshold=True)(fg_fractions)


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
    fine_by_rule: dict[str, bool] = field(default_factory=dict)  # ``fine`` under each rule of fine_rules.SENSITIVITY
    segmenter_info: dict[str, Any] = field(default_factory=dict)  # what the segmenter said, e.g. {"n_boxes": 2}
    fg: list[float] | None = None  # the foreground fraction per patch as logged (float32 values), None: no mask
    # counterfactual truth (the region test, same removal call): the model's own prediction survives with only
    # the background kept / only the foreground kept; None without a mask or where a region could not run
    bg_sufficient: bool | None = None
    fg_sufficient: bool | None = None
    additive_share: float | None = None  # Evidence.additive_share (logged with the region test, not here)
    label: int | None = None  # the sample's label and the model's prediction: the pair ``fine_by_rule`` is of
    pred: int | None = None

    def log_fields(self) -> dict[str, Any]:
        """The sample's diagnosis fields; also what ``rescore`` needs to redo it without a model: the patch-grid
        mask (``fg``) and the null's share (``null_fg``, per rule ``nulls``). ``fine_by_rule`` is not logged
        (sample log version 3): it follows from the label and prediction, and the result holds each rule's fine
        pairs (``fine_rules.pairs_text``)."""
        head = next(iter(self.outcomes.values()))
        out: dict[str, Any] = {"fg_fraction": head.score, "driver": head.driver, "null_fg": head.null_fg}
        if not self.correct:
            out["error_type"] = head.error_type
        if len(self.outcomes) > 1:
            out["drivers"] = {name: o.driver for name, o in self.outcomes.items()}
            out["scores"] = {name: o.score for name, o in self.outcomes.items()}
            out["nulls"] = {name: o.null_fg for name, o in self.outcomes.items()}
        out.update(self.segmenter_info)  # logged only when a segmenter reported something (GroundedSAM: n_boxes)
        if self.fg is not None:
            out["fg"] = self.fg
        return out


def logged_grid(fg: np.ndarray) -> list[float]:
    """A patch grid as the sample log holds it: each float32 value in its shortest decimal form, which reads back
    (as float32) to the very same value, so a rescored diagnosis equals the run's bit for bit."""
    return logged_grids([fg])[0]


def logged_grids(grids: Sequence[np.ndarray]) -> list[list[float]]:
    """:func:`logged_grid` of each grid, each distinct float32 value (bit pattern) turned into its decimal form
    once: a mask's grid holds few distinct fractions (k / pixels per patch), a 50,000-sample task millions."""

    flat = [np.asarray(g, dtype=np.float32).ravel() for g in grids]
    if not flat:
        return []
    bits, inverse = np.unique(np.concatenate(flat).view(np.uint32), return_inverse=True)
    text = np.array([float(str(v)) for v in bits.view(np.float32)] + [None], dtype=object)[:-1]
    values = text[inverse].tolist()
    ends = np.cumsum([len(f) for f in flat]).tolist()
    return [values[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def read_grid(values: Sequence[float]) -> np.ndarray:
    """A logged patch grid back as the float32 array the run diagnosed (see :func:`logged_grid`)."""

    return np.asarray(values, dtype=np.float32)


@dataclass(frozen=True)
class Case:
    """One sample as the diagnosis reads it. Without a mask (``fg`` None) nothing is decided; ``sample_id``
    seeds the null's draws (default: the index), ``cluster`` is the bootstrap unit."""

    index: int
    label: int
    pred: int
    evidence: Evidence
    fg: np.ndarray | None = None  # (N,) foreground fraction per patch, raster order
    sample_id: str | None = None
    cluster: str | None = None
    fine_by_rule: dict[str, bool] | None = None  # as logged (a rescore reads it back), for DiagnosisRecord


def diagnose_sample(
    index: int,
    label: int,
    pred: int,
    evidence: Evidence,
    fg: np.ndarray | None,
    groups: dict[int, Any] | FineRelation | None,
    settings: DiagnosisSettings,
    sample_id: str | None = None,
    cluster: str | None = None,
) -> DiagnosisRecord:
    """Driver and error type of one sample under each rule: :func:`diagnose_batch` on a batch of one."""
    return diagnose_batch([Case(index, label, pred, evidence, fg, sample_id, cluster)], groups, settings)[0]


def diagnose_batch(
    cases: Sequence[Case], groups: dict[int, Any] | FineRelation | None, settings: DiagnosisSettings
) -> list[DiagnosisRecord]:
    """Driver and error type of every case under each rule, with the rule's null and its per-target outcomes.
    Rules registered with :func:`patch_rule` are scored as array operations over the whole batch, the null's
    draws of all cases included (``arrays``); each case's numbers are those it gets alone."""
    correct = [c.label == c.pred for c in cases]
    fine = [is_fine(groups, c.label, c.pred) for c in cases]
    outcomes: list[dict[str, RuleOutcome]] = [{} for _ in cases]
    assign = BlockSet(  # grids and int64 cluster ids, once for all rules
        [
            (i, c.fg, c.evidence.assignments)
            for i, c in enumerate(cases)
            if c.fg is not None and c.evidence.assignments is not None
        ]
    )
    masked = [i for i, c in enumerate(cases) if c.fg is not None]
    rules = [RULES[name] for name in settings.rules]
    scored = [_rule_scores(rule_, cases, assign, masked, settings) for rule_ in rules]
    decided = [[i for i in masked if s.drivers[i] is not None] for s in scored]
    nulls = _null_shares(rules, cases, assign, decided, settings)
    for name, s, null in zip(settings.rules, scored, nulls):
        for out, outcome in zip(outcomes, _rule_outcomes(s, null, cases, correct, fine)):
            out[name] = outcome
    grids = dict(zip(masked, logged_grids([_grid(cases[i]) for i in masked])))
    areas = grid_means({i: _grid(cases[i]) for i in masked})
    return [
        DiagnosisRecord(
            c.index,
            ok,
            c.fg is not None,
            out,
            areas.get(i),
            c.cluster,
            f,
            {} if c.fine_by_rule is None else c.fine_by_rule,
            fg=grids.get(i),
            bg_sufficient=_truth(c)[0],
            fg_sufficient=_truth(c)[1],
            additive_share=c.evidence.additive_share if c.fg is not None else None,
            label=c.label,
            pred=c.pred,
        )
        for i, (c, ok, f, out) in enumerate(zip(cases, correct, fine, outcomes))
    ]


def _truth(case: Case) -> tuple[bool | None, bool | None]:
    """The counterfactual truth of a masked case (``region_truth``); (None, None) without a mask."""
    return region_truth(case.evidence, case.pred) if case.fg is not None else (None, None)


@dataclass
class RuleScores:
    """One rule's scores over a batch: per masked case its score and driver, and per explained target
    (``by_target``, {} for a rule not reading importances) each case's score; the threshold that called them."""

    scores: dict[int, float | None]
    drivers: dict[int, str | None]
    by_target: dict[str, dict[int, float | None]]
    threshold: float


def _rule_scores(
    rule_: Rule, cases: Sequence[Case], assign: BlockSet, masked: list[int], settings: DiagnosisSettings
) -> RuleScores:
    """One rule's score and driver of every masked case, and per explained target (``assign``: the masked
    cases with cluster ids, as blocks)."""
    scores = _scores(rule_, cases, assign, masked)
    threshold = rule_.threshold(settings)
    drivers = {i: _driver(s, threshold) for i, s in scores.items()}
    by_target: dict[str, dict[int, float | None]] = {}
    if rule_.null_field == "importance":
        targets = [i for i in masked if cases[i].evidence.by_target is not None]
        by_target = {t: _target_scores(rule_, cases, assign, targets, t, scores) for t in ("pred", "label")}
    return RuleScores(scores, drivers, by_target, threshold)


def _rule_outcomes(
    scored: RuleScores, nulls: dict[int, float | None], cases: Sequence[Case], correct: list[bool], fine: list[bool]
) -> list[RuleOutcome]:
    """One rule's outcome for every case: score and driver, per explained target, and the null's share."""
    by_target, threshold = scored.by_target, scored.threshold

    def outcome(i: int, score: float | None, driver: str | None) -> RuleOutcome:
        return RuleOutcome(score, driver, None if cases[i].fg is None else error_type(correct[i], driver, fine[i]))

    out = []
    for i, case in enumerate(cases):
        per_target = None
        if by_target and case.fg is not None and case.evidence.by_target is not None:
            per_target = {
                t: outcome(i, by_target[t][i], _driver(by_target[t][i], threshold)) for t in case.evidence.by_target
            }
        driver = scored.drivers.get(i)
        kind = None if case.fg is None else error_type(correct[i], driver, fine[i])
        out.append(RuleOutcome(scored.scores.get(i), driver, kind, nulls.get(i), per_target))
    return out


def region_truth(evidence: Evidence, pred: int) -> tuple[bool | None, bool | None]:
    """(background alone keeps the prediction, foreground alone keeps it), from the region test's predictions:
    the intervention the rules are read against. Compared with the model's own prediction ``pred`` whatever
    class the attribution explained, so for an error it asks whether the *wrong* answer survives removing every
    foreground patch. (None, None) where the test did not run or a region held no patch."""
    if evidence.pred_fg_only is None or evidence.pred_bg_only is None:
        return None, None
    return evidence.pred_bg_only == pred, evidence.pred_fg_only == pred


def _driver(score: float | None, threshold: float) -> str | None:
    return None if score is None else ("fg" if score >= threshold else "bg")


def _rule_values(rule_: Rule, evidence: Evidence, target: str | None) -> Sequence[float] | None:
    """The per-cluster values the rule reads: its field, or under ``target`` that target's importances."""
    if target is None:
        return None if rule_.null_field is None else getattr(evidence, rule_.null_field)
    return None if evidence.by_target is None else evidence.by_target[target]


def _scores(
    rule_: Rule, cases: Sequence[Case], assign: BlockSet, rows: list[int], target: str | None = None
) -> dict[int, float | None]:
    """The rule's score of each case at ``rows`` (their masks are given); ``target``: with that explained
    target's importances. A :func:`patch_rule` scores every block of the batch in one call."""

    if rule_.on_patches is None:  # a rule given per sample (``@rule``): called per sample
        if target is None:
            return {i: rule_.score(cases[i].evidence, _grid(cases[i])) for i in rows}
        return {i: rule_.score(_with_importance(cases[i].evidence, target), _grid(cases[i])) for i in rows}
    out: dict[int, float | None] = dict.fromkeys(rows)
    values = {i: _rule_values(rule_, cases[i].evidence, target) for i in rows}
    for block in assign.take([i for i in rows if i in assign.where and values[i] is not None]):
        table, lengths = value_table([values[i] or () for i in block.rows])
        index = patch_index(block.assignments, lengths, table.shape[1])
        score, decided = rule_.on_patches(np.take_along_axis(table, index, axis=1), block.fg)
        out.update({i: float(s) if ok else None for i, s, ok in zip(block.rows, score.tolist(), decided.tolist())})
    return out


def _target_scores(
    rule_: Rule, cases: Sequence[Case], assign: BlockSet, rows: list[int], target: str, scores: dict[int, float | None]
) -> dict[int, float | None]:
    """:func:`_scores` under ``target``; a case whose ``target`` importances are the very values it logged as
    ``importance`` (the target the run explained) has the score it has in ``scores``: same values, same score."""
    by_target = {i: cases[i].evidence.by_target for i in rows}
    same = [i for i in rows if (by_target[i] or {}).get(target) is cases[i].evidence.importance and i in scores]
    out = {i: scores[i] for i in same}
    out.update(_scores(rule_, cases, assign, [i for i in rows if i not in out], target))
    return {i: out[i] for i in rows}


def _with_importance(evidence: Evidence, target: str) -> Evidence:
    assert evidence.by_target is not None
    return replace(evidence, importance=evidence.by_target[target])


def _null_shares(
    rules: Sequence[Rule],
    cases: Sequence[Case],
    assign: BlockSet,
    rows: Sequence[list[int]],
    settings: DiagnosisSettings,
) -> list[dict[int, float | None]]:
    """Per rule, the null's share of fg calls for each case at its ``rows`` (decided, with a mask); {} without a
    null. The :func:`patch_rule` rules permuting the same field are scored together (:func:`_patch_nulls`); a rule
    given per sample is called once per case and draw."""

    out: list[dict[int, float | None]] = [{} for _ in rules]
    shared: dict[str, list[int]] = {}  # field -> the rules (positions) whose null permutes it
    for k, rule_ in enumerate(rules):
        if rule_.null_field is None or settings.null_draws <= 0 or not rows[k]:
            continue
        if rule_.on_patches is None:
            seeds = {i: _null_seed(settings.seed, _seed_id(cases[i])) for i in rows[k]}
            out[k] = {i: null_fg_share(rule_, cases[i].evidence, _grid(cases[i]), settings, seeds[i]) for i in rows[k]}
        else:
            shared.setdefault(rule_.null_field, []).append(k)
    draws: dict[tuple[int, int], np.ndarray] = {}  # the null's permutations per case, shared by the fields
    for ks in shared.values():
        for k, got in zip(
            ks, _patch_nulls([rules[k] for k in ks], cases, assign, [rows[k] for k in ks], settings, draws)
        ):
            out[k] = got
    return out


def _patch_nulls(
    rules: Sequence[Rule],
    cases: Sequence[Case],
    assign: BlockSet,
    rows: Sequence[list[int]],
    settings: DiagnosisSettings,
    draws: dict[tuple[int, int], np.ndarray],
) -> list[dict[int, float | None]]:
    """The nulls of :func:`patch_rule` rules permuting the same field: all draws of all cases at once, each draw's
    patch values gathered once and scored by every rule (``arrays.null_counts``); a rule's shares kept for its
    own ``rows``. A case's null is its own whatever else is in the batch, so scoring the union is exact.
    ``draws`` keeps each case's permutations for the next field with as many values (same seed, same draws)."""

    union = sorted(set().union(*rows))
    values = {i: _rule_values(rules[0], cases[i].evidence, None) or () for i in union}
    scores = [(rule_.on_patches, rule_.threshold(settings)) for rule_ in rules if rule_.on_patches is not None]
    wanted = [set(r) for r in rows]
    out: list[dict[int, float | None]] = [{} for _ in rules]
    kept = [i for i in union if i in assign.where]  # a decided case without cluster ids reads no values: none
    for block in assign.take(kept) + blocks([(i, cases[i].fg, ()) for i in union if i not in assign.where]):
        table, lengths = value_table([values[i] for i in block.rows])
        index = patch_index(block.assignments, lengths, table.shape[1])
        present = present_clusters(index, table.shape[1])
        orders = _orders(draws, cases, block.rows, present.sum(1).tolist(), settings)
        counted = null_counts(scores, table, index, block.fg, null_columns(present, orders))
        for k, (calls, decided) in enumerate(counted):
            out[k].update(
                (i, None if d == 0 else c / d)
                for i, c, d in zip(block.rows, calls.tolist(), decided.tolist())
                if i in wanted[k]
            )
    return out


def _orders(
    draws: dict[tuple[int, int], np.ndarray],
    cases: Sequence[Case],
    rows: list[int],
    sizes: list[int],
    settings: DiagnosisSettings,
) -> list[np.ndarray]:
    """Case ``rows[k]``'s permutations of its ``sizes[k]`` non-empty clusters (``null_order``, seeded by
    ``_null_seed``; ``arrays.null_orders`` makes those missing at once), made once per batch: every rule permuting
    as many values draws the same ones."""
    missing = [(i, n) for i, n in zip(rows, sizes) if (i, n) not in draws]
    seeds = [_null_seed(settings.seed, _seed_id(cases[i])) for i, _ in missing]
    draws.update(zip(missing, null_orders(seeds, [n for _, n in missing], settings.null_draws)))
    return [draws[(i, n)] for i, n in zip(rows, sizes)]


def _seed_id(case: Case) -> str:
    return str(case.index) if case.sample_id is None else case.sample_id


def _grid(case: Case) -> np.ndarray:
    assert case.fg is not None  # only cases with a mask are scored (a case without one decides nothing)
    return case.fg


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
