"""Diagnosis per task (docs/design.md sections 7.5 and 8): BG-Er / Fine-Er as shares of misclassified samples
under every driver rule, with their bootstrap intervals; the rule's null (its expected shares with each sample's
cluster values permuted) and the one-sided permutation p-value of the share against it; the counterfactual truth
beside them (``bg_sufficient_rate``: the wrong prediction survives with only the background kept) and each rule's
agreement with it; the rates per explained target and the counts behind each share.

:func:`summarise` reads the per-sample :class:`~covar_harness.diagnosis.rules.DiagnosisRecord` s; :func:`diagnose` runs
the per-sample diagnosis and the summary over logged sample rows (dicts read from ``samples.jsonl``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from covar_harness.common.metrics import bootstrap_interval, poisson_binomial_upper, shared_draws
from covar_harness.diagnosis.fine_rules import pairs_text
from covar_harness.diagnosis.rules import (
    RULES,
    Case,
    DiagnosisRecord,
    DiagnosisSettings,
    Evidence,
    Rule,
    RuleOutcome,
    diagnose_batch,
)

if TYPE_CHECKING:
    import numpy as np


# ---- per task -----------------------------------------------------------------------------------------------------
@dataclass
class Diagnosis:
    per_sample: dict[int, dict] = field(default_factory=dict)  # index -> its log fields (filled by ``diagnose``)
    metrics: dict[str, float | None] = field(default_factory=dict)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    by_rule: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


HEADLINE_EXTRAS = (
    "bg_er_null",
    "bg_er_null_p",
    "fine_er_null",
    "fine_er_null_p",
    "fg_driven_rate_null",
    "bg_er_pred",
    "bg_er_label",
    "fine_er_pred",
    "fine_er_label",
)  # headline-rule metrics beside fg_driven_rate / bg_er / fine_er, present where the rule defines them


def summarise(records: list[DiagnosisRecord], settings: DiagnosisSettings, has_groups: bool) -> Diagnosis:
    """BG-Er / Fine-Er as shares of misclassified samples, per rule. Samples without a mask or without the
    records a rule needs are left out of that rule's rates (counted as ``n_undetermined``). Beside them: the
    rule's null and the p-value against it, the rates per explained target, and the counts behind each share;
    the counterfactual truth (rule-free) in the metrics and each rule's agreement with it in ``by_rule``."""
    with shared_draws():  # the intervals over the same errors (every rule's, each target's) share their draws
        return _summarise(records, settings, has_groups)


def _summarise(records: list[DiagnosisRecord], settings: DiagnosisSettings, has_groups: bool) -> Diagnosis:
    out = Diagnosis(config={**settings.as_config(), "fine_grained_groups": has_groups})
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
            any(o.driver is not None for _, o in errors),
        )
        summary["n_undetermined"] = len(records) - len(decided)
        summary.update(_counts(records, errors))
        intervals = summary.pop("intervals")
        for extra in (
            _null_rates(RULES[name], decided, errors, settings, clustered),
            _target_rates(errors, settings, clustered),
            _agreement(errors),
        ):
            intervals.update(extra.pop("intervals"))
            summary.update(extra)
        out.by_rule[name] = {**summary, "intervals": intervals}
        if r_i == 0:
            out.metrics = {k: summary[k] for k in ("fg_driven_rate", "bg_er", "fine_er")}
            out.metrics.update({k: summary[k] for k in HEADLINE_EXTRAS if k in summary})
            out.intervals = dict(intervals)
    truth = _truth_rates(records, settings, clustered)
    if truth:
        out.intervals.update(truth.pop("intervals"))
        out.metrics.update({k: truth.pop(k) for k in TRUTH_METRICS})
        out.config["counterfactual_truth"] = {**truth, "definition": TRUTH_DEFINITION}
    redundancy = redundancy_summary(records)
    if redundancy:
        out.metrics["additive_share"] = redundancy["median"]
        out.config["redundancy"] = redundancy
    return out


# ---- redundant evidence (issue 23 item 6) ------------------------------------------------------------------------
REDUNDANCY_WARN_BELOW = 0.5  # median additive share under which most of the target's drop is invisible to CCI
REDUNDANCY_DEFINITION = (
    "additive_share per sample: the sum of CCI's single-cluster drops over the drops of removing the foreground "
    "and the background whole (the region test, same removal call); 1 when the evidence adds up over patches, "
    "near 0 when several clusters each carry it alone (redundant evidence: leave-one-out gives each ~0)"
)


def redundancy_summary(records: list[DiagnosisRecord]) -> dict[str, Any]:
    """The median additive share over the masked samples that have one, the share of them under 0.5, and a
    warning when the median is under ``REDUNDANCY_WARN_BELOW``: then most of what the model reads is missing from
    every cluster's importance, so the drivers (and BG-Er) rest on what little leave-one-out still sees; a
    smaller ``--cci-k`` or ``cci-shapley`` handles it. Empty without values (no masks, no leave-one-out drops)."""

    values = np.asarray([r.additive_share for r in records if r.additive_share is not None], dtype=float)
    if not len(values):
        return {}
    median = float(np.median(values))
    out: dict[str, Any] = {
        "n": len(values),
        "median": median,
        "share_below_half": float((values < 0.5).mean()),
        "warn_below": REDUNDANCY_WARN_BELOW,
        "definition": REDUNDANCY_DEFINITION,
    }
    if median < REDUNDANCY_WARN_BELOW:
        out["warning"] = redundancy_warning(median)
    return out


def redundancy_warning(median: float) -> str:
    """The one line that says redundant evidence hides most of the importance (result notes, leaderboard)."""
    return (
        f"redundant evidence: CCI's single-cluster drops explain a median {100 * median:.0f}% of the drop of "
        "removing the regions whole; most importance is missing from every cluster, so the drivers rest on what "
        "leave-one-out still sees (try a smaller --cci-k or --attribution cci-shapley)"
    )


def summarise_pair(
    records: list[DiagnosisRecord],
    settings: DiagnosisSettings,
    fine_records: dict[str, dict[str, Any]],
    segmenter: dict[str, Any],
    headline_target: str | None,
) -> Diagnosis:
    """The pair's diagnosis as the result holds it: :func:`summarise` under the chosen fine rule, Fine-Er under
    every fine rule, and the config the diagnosis step writes. ``fine_records``: {spec: the rule's record for the
    task} (``FineRelation.record``) for ``fine_rules.SENSITIVITY`` and the chosen rule, in that order. One
    function for the run's step and for ``rescore``, so the two cannot disagree."""
    chosen = {k: v for k, v in fine_records[settings.fine_rule].items() if k != "fine_pairs"}  # a rescore's has them
    result = summarise(records, settings, bool(chosen["applies"]))
    applies = {s: bool(r["applies"]) for s, r in fine_records.items()}
    pairs = fine_pairs(records, list(fine_records))
    result.config = {
        **result.config,
        "fine_rule": chosen["description"],
        "fine": chosen,
        "fine_sensitivity": fine_sensitivity(records, settings.rules[0], applies),
        "fine_rules": {spec: {**r, "fine_pairs": pairs[spec]} for spec, r in fine_records.items()},
        "segmenter": segmenter,
        "headline_target": headline_target,
        "by_rule": result.by_rule,
    }
    return result


TRUTH_METRICS = ("bg_sufficient_rate", "fg_sufficient_rate")
TRUTH_DEFINITION = (
    "bg_sufficient_rate: share of the errors with a mask whose (wrong) prediction survives removing every "
    "foreground patch (the region test, same removal call); fg_sufficient_rate: the same with every background "
    "patch removed. Rule-free: an intervention, read beside BG-Er"
)


def _truth_rates(records: list[DiagnosisRecord], settings: DiagnosisSettings, clustered: bool) -> dict[str, Any]:
    """The counterfactual truth beside every BG-Er: of the errors whose region test ran, the share whose wrong
    prediction survives with the background alone (``bg_sufficient_rate``) and with the foreground alone
    (``fg_sufficient_rate``). Empty when no error had the test (no masks, ``--no-counterfactual``)."""

    tested = [r for r in records if not r.correct and r.has_mask and r.bg_sufficient is not None]
    if not tested:
        return {}
    clusters = [r.cluster for r in tested] if clustered else None
    out: dict[str, Any] = {"n_tested": len(tested), "intervals": {}}
    for key, values in (
        ("bg_sufficient_rate", np.asarray([bool(r.bg_sufficient) for r in tested], dtype=float)),
        ("fg_sufficient_rate", np.asarray([bool(r.fg_sufficient) for r in tested], dtype=float)),
    ):
        out[key] = float(values.mean())
        out["intervals"][key] = _interval(values, settings, clusters)
    return out


def _agreement(errors: list[tuple[DiagnosisRecord, RuleOutcome]]) -> dict[str, Any]:
    """How the rule's verdicts on errors compare with the counterfactual truth, over the errors where exactly one
    region alone keeps the prediction (the decisive ones): ``sensitivity`` = called bg among background-
    sufficient, ``specificity`` = called fg among foreground-sufficient. A per-pair reliability flag: a rule
    that disagrees with the intervention on this pair's errors deserves less trust here."""
    decisive = [(r, o) for r, o in errors if o.driver is not None and r.bg_sufficient != r.fg_sufficient]
    decisive = [(r, o) for r, o in decisive if r.bg_sufficient is not None]
    bg = [o.driver == "bg" for r, o in decisive if r.bg_sufficient]
    fg = [o.driver == "fg" for r, o in decisive if r.fg_sufficient]
    return {
        "vs_counterfactual": {
            "n_bg_sufficient": len(bg),
            "n_fg_sufficient": len(fg),
            "sensitivity": sum(bg) / len(bg) if bg else None,
            "specificity": sum(fg) / len(fg) if fg else None,
        },
        "intervals": {},
    }


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
    if not len(values):
        return None
    interval = bootstrap_interval(values, n_boot=settings.bootstrap, seed=settings.seed, clusters=clusters)
    return None if interval is None else list(interval)


def _rates(
    drivers: list[bool],
    errors: list[str | None],
    settings: DiagnosisSettings,
    driver_clusters: list[str | None] | None = None,
    error_clusters: list[str | None] | None = None,
    any_decided: bool = True,
) -> dict[str, Any]:
    """fg_driven_rate, BG-Er and Fine-Er with their intervals. An undetermined error counts as ``other`` (it stays
    in the denominator), but when the rule decided none of the errors (``any_decided`` False) BG-Er and Fine-Er
    are None: the rule said nothing about them."""

    fg = np.asarray(drivers, dtype=float)
    # a rule that decided none of the errors says nothing about them: null, not 0.0 [0, 0]
    shown = errors if any_decided else []
    bg_err = np.asarray([e == "bg" for e in shown], dtype=float)
    fine_err = np.asarray([e == "fine" for e in shown], dtype=float)
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
    """The rule's null: the shares it gives when each sample's cluster values are permuted (uninformative
    importances on the same clusters), and the one-sided p-value of the observed share against it.

    The null is a test, not a baseline to subtract: its level follows how sparse the importances are and how the
    object falls across clusters, so BG-Er minus null is not a share of errors (a planted set with half its
    errors background-driven reads 50% raw but -0.22 minus null). ``bg_er_null_p`` = P(at least the observed
    number of background-driven errors | each error independently called bg with its null probability
    1 - null_fg), a Poisson-binomial tail; ``fine_er_null_p`` likewise for fine-grained errors. Small p: the
    importances put errors on the background (on fine-grained confusions) more than uninformative ones would.
    The per-error null probabilities are ``null_draws`` Monte-Carlo estimates, so p is approximate. An error the
    rule leaves undetermined is undetermined under the null too (probability 0), as in the share."""

    if rule_.null_field is None or settings.null_draws <= 0:
        return {"null": "none: the rule reads no cluster importances", "intervals": {}}
    fg_null = np.asarray([o.null_fg or 0.0 for _, o in decided], dtype=float)
    bg_null = np.asarray([0.0 if o.null_fg is None else 1.0 - o.null_fg for _, o in errors], dtype=float)
    fine_null = np.asarray([(o.null_fg or 0.0) * r.fine for r, o in errors], dtype=float)
    any_decided = any(o.driver is not None for _, o in errors)
    n_bg = sum(o.error_type == "bg" for _, o in errors)
    n_fine = sum(o.error_type == "fine" for _, o in errors)
    out: dict[str, Any] = {
        "fg_driven_rate_null": float(fg_null.mean()) if len(fg_null) else None,
        "bg_er_null": float(bg_null.mean()) if any_decided else None,
        "fine_er_null": float(fine_null.mean()) if any_decided else None,
        "bg_er_null_p": poisson_binomial_upper(bg_null, n_bg) if any_decided else None,
        "fine_er_null_p": poisson_binomial_upper(fine_null, n_fine) if any_decided else None,
        "intervals": {},
    }
    if any_decided:
        out["intervals"]["bg_er_null"] = _interval(
            bg_null, settings, [r.cluster for r, _ in errors] if clustered else None
        )
    return out


def _target_rates(
    errors: list[tuple[DiagnosisRecord, RuleOutcome]], settings: DiagnosisSettings, clustered: bool
) -> dict[str, Any]:
    """BG-Er / Fine-Er with the prediction and with the label explained (``bg_er_pred``, ``bg_er_label``, ...),
    where every error's record holds both targets; an error undetermined under a target counts as ``other``, and
    a target under which no error is decided gives None (as BG-Er does)."""

    out: dict[str, Any] = {"intervals": {}}
    if not errors or any(o.by_target is None for _, o in errors):
        return out
    clusters = [r.cluster for r, _ in errors] if clustered else None
    for target in ("pred", "label"):
        outcomes = [o.by_target[target] for _, o in errors if o.by_target is not None]
        decided = any(o.driver is not None for o in outcomes)
        for metric, kind in (("bg_er", "bg"), ("fine_er", "fine")):
            values = np.asarray([o.error_type == kind for o in outcomes], dtype=float)
            out[f"{metric}_{target}"] = float(values.mean()) if decided else None
            if decided:
                out["intervals"][f"{metric}_{target}"] = _interval(values, settings, clusters)
    return out


def fine_pairs(records: list[DiagnosisRecord], specs: list[str]) -> dict[str, str]:
    """{fine rule: the errors' (label, pred) pairs it calls fine-grained (``fine_by_rule``)}, as the result records
    them (``fine_rules.pairs_text``): what ``rescore`` reads the rules back from. A rule relates label and
    prediction only, so each distinct pair is looked at once."""
    by_pair: dict[tuple[int, int], dict[str, bool]] = {}
    for r in records:
        if not r.correct and r.fine_by_rule and r.label is not None and r.pred is not None:
            by_pair.setdefault((r.label, r.pred), r.fine_by_rule)
    return {spec: pairs_text(pair for pair, fine in by_pair.items() if fine.get(spec, False)) for spec in specs}


def fine_sensitivity(
    records: list[DiagnosisRecord], headline_rule: str, applies: dict[str, bool]
) -> dict[str, float | None]:
    """Fine-Er under each fine-grained rule (``fine_by_rule``), with the headline driver rule's drivers: the share
    of errors with a mask that are foreground-driven and fine-grained under that rule. The paper's rule is
    unknown, so how far Fine-Er moves between reasonable rules is part of the measurement. Null where a rule has
    nothing to go on for the task (``applies`` False) or there is no error with a mask."""
    errors = [r for r in records if not r.correct and r.has_mask]
    out: dict[str, float | None] = {}
    for spec, ok in applies.items():
        hits = [r.outcomes[headline_rule].driver == "fg" and r.fine_by_rule.get(spec, False) for r in errors]
        out[spec] = sum(hits) / len(hits) if ok and hits else None
    return out


def row_records(
    rows: Sequence[dict],
    fgs: Sequence[np.ndarray | None],
    fine: Any,
    settings: DiagnosisSettings,
    fine_by_rule: Sequence[dict[str, bool] | None] | None = None,
) -> list[DiagnosisRecord]:
    """Logged sample rows (``samples.jsonl``: index, label, pred, ``file``, ``source_id``, the attribution
    entries) diagnosed as the run's step diagnosed them, all at once (``diagnose_batch``): the same sample id
    seeds the null and ``source_id`` is the bootstrap unit. ``fgs[i]``: row i's patch grid; ``fine``: a
    ``FineRelation`` or a class-groups mapping; ``fine_by_rule[i]``: row i's {fine rule: fine-grained} (from the
    result's ``fine_pairs``), else the row's own ``fine_by_rule`` (a log of version 2 holds one per error)."""
    logged = [r.get("fine_by_rule") for r in rows] if fine_by_rule is None else fine_by_rule
    cases = [
        Case(
            int(row["index"]),
            int(row["label"]),
            int(row["pred"]),
            Evidence.of_row(row),
            fg,
            row.get("id", row.get("file")),
            None if row.get("source_id") is None else str(row["source_id"]),
            dict(by_rule) if isinstance(by_rule, dict) else None,
        )
        for row, fg, by_rule in zip(rows, fgs, logged)
    ]
    return diagnose_batch(cases, fine, settings)


def diagnose(
    rows: list[dict], fg_grids: dict[int, np.ndarray], groups: dict[int, Any] | None, settings: DiagnosisSettings
) -> Diagnosis:
    """:func:`row_records` and :func:`summarise` over logged sample rows (index, label, pred, and the
    attribution entries ``cci`` / ``shapley`` / ``counterfactual``). ``fg_grids``: index -> (rows*cols,)
    foreground fraction per patch, raster order."""
    records = row_records(rows, [fg_grids.get(row["index"]) for row in rows], groups, settings)
    out = summarise(records, settings, groups is not None)
    out.per_sample = {r.index: r.log_fields() for r in records}
    return out
