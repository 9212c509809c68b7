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

With several rules, each sample also gets ``scores`` {rule: score} next to ``drivers`` {rule: driver}. numpy is
imported inside the functions, so the CLI can read :class:`DiagnosisSettings` for its flags without it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from covar_harness.common.flags import flag
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
        """From a logged sample row (``samples.jsonl``): ``diagnose`` over a finished run's log."""
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
    fine_by_rule: dict[str, bool] = field(default_factory=dict)  # ``fine`` under each rule of fine_rules.SENSITIVITY
    segmenter_info: dict[str, Any] = field(default_factory=dict)  # what the segmenter said, e.g. {"n_boxes": 2}
    fg: list[float] | None = None  # the foreground fraction per patch as logged (float32 values), None: no mask

    def log_fields(self) -> dict[str, Any]:
        """The sample's diagnosis fields; also what ``rescore`` needs to redo it without a model: the patch-grid
        mask (``fg``), the null's share (``null_fg``, per rule ``nulls``) and, for errors, ``fine_by_rule``."""
        head = next(iter(self.outcomes.values()))
        out: dict[str, Any] = {"fg_fraction": head.score, "driver": head.driver, "null_fg": head.null_fg}
        if not self.correct:
            out["error_type"] = head.error_type
            if self.fine_by_rule:
                out["fine_by_rule"] = dict(self.fine_by_rule)
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
    import numpy as np

    return [float(str(v)) for v in np.asarray(fg, dtype=np.float32)]


def read_grid(values: Sequence[float]) -> np.ndarray:
    """A logged patch grid back as the float32 array the run diagnosed (see :func:`logged_grid`)."""
    import numpy as np

    return np.asarray(values, dtype=np.float32)


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
    """Driver and error type of one sample under each rule. Without a mask (``fg`` None) nothing is decided.
    ``sample_id`` seeds the null's draws (default: the index), ``cluster`` is the bootstrap unit."""
    correct = label == pred
    fine = is_fine(groups, label, pred)
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
    grid = None if fg is None else logged_grid(fg)
    return DiagnosisRecord(index, correct, fg is not None, outcomes, area, cluster, fine, fg=grid)


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
