"""``covar-harness sanity``: which diagnosis to trust, measured where the truth is known (issue 9).

Two bundled demo models differ in one known way: ``demo/shapes-clean`` decides from the object,
``demo/shapes-shortcut`` from a planted background cue. A diagnosis rule is worth trusting when its fg-score
(``diagnosis.SCORERS``: higher = more foreground-driven) tells their decisions apart. Per rule x attributor:

- AUROC (clean = positive class, score = the rule's fg-score; shortcut decisions should score lower) on
  (a) ``covar-shapes/original``, correctly classified samples and (b) ``covar-shapes/bg_varied``, errors; and
  their mean, each with a seeded bootstrap interval (each model's samples resampled on their own). A sample whose
  rule gives no score (e.g. no positive importance) counts as 0.5, a coin flip, rather than being dropped, so a
  rule cannot look better by abstaining. Rules are ranked on (a), the column that discriminates: both models
  classify those images, so only the reason differs; (b) has few clean-model errors.
- agreement with the counterfactual proxy truth: driver == "bg" vs outcome == "bg-sufficient" (background patches
  alone reproduce the decision, foreground alone does not), on the same samples. The region test is a proxy, not
  the truth, and is itself the ``counterfactual`` rule's evidence, so agreement is no argument for a rule.
- sensitivity and specificity against that truth on the decisive samples (exactly one region alone keeps the
  decision): P(rule says bg | bg-sufficient) and P(rule says fg | fg-sufficient). What a rule's BG-Er misses and
  what it adds, measured on the two planted demo models (issue 23).
- paired differences: each ranked row against the next one, AUROC on original / correct, with a bootstrap
  interval from the same resampled samples for both rows (the rows score the same images), so "A ranks above B"
  is read from the interval of A - B, not from two overlapping marginal intervals.
- cost per image relative to a plain forward: wall time of the same evaluation with and without the attributor.

The ``paper`` rule is labelled "inferred": the paper's exact rule is not published; it is kept for comparison.

Everything runs through the shared evaluator (``evaluator.evaluate_task`` with the attributor's step and the
diagnosis settings, no result files written): one evaluation per model x task x attributor, plus a plain one for
timing. The rules are computed by ``covar_harness.diagnosis.rules`` (every rule at once, per-sample ``scores``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from argparse import Namespace
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from covar_harness.attribution.settings import DEFAULTS
from covar_harness.catalog.plugin_manager import call_with_accepted, load_catalog
from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import console, markup, print_rows
from covar_harness.common.metrics import auroc_replicates, percentile_interval
from covar_harness.common.safe_files import atomic_write
from covar_harness.diagnosis.rules import RULES, DiagnosisSettings
from covar_harness.models.specs import load_model
from covar_harness.run.evaluator import evaluate_task
from covar_harness.run.options import RunOptions
from covar_harness.run.pair import PairRequest
from covar_harness.run.progress import Reporter, progress_reporter
from covar_harness.run.text_cache import ClassifierCache

CLEAN, SHORTCUT = "demo/shapes-clean", "demo/shapes-shortcut"
ORIGINAL, BG_VARIED = "covar-shapes/original", "covar-shapes/bg_varied"
ATTRIBUTORS = ("cci", "cci-shapley", "random")
# the attributor whose records a rule is named after; other combinations are reported as "<rule>/<attributor>"
NATURAL = {"paper": "cci", "area": "cci", "shapley": "cci-shapley", "counterfactual": "cci"}
# combinations that add information (paper/area on cci-shapley repeat the cci numbers: the same leave-one-out
# values; the counterfactual test does not depend on the attributor)
ROWS = (
    ("paper", "cci"),
    ("area", "cci"),
    ("shapley", "cci-shapley"),
    ("counterfactual", "cci"),
    ("paper", "random"),
    ("area", "random"),
)
RANKED_BY = "auroc_original_correct"
N_BOOT = 1000


@dataclass
class Evaluation:
    """One model x task x attributor (or plain) evaluation: its per-sample rows and wall time."""

    rows: list[dict]
    seconds: float
    acc1: float


@dataclass
class SanityRun:
    """Every evaluation of the report, keyed by (model, task, attributor or "plain")."""

    evals: dict[tuple[str, str, str], Evaluation] = field(default_factory=dict)
    runtime_s: float = 0.0
    limit: int | None = None
    seed: int = 0


def row_name(rule: str, attributor: str) -> str:
    return rule if NATURAL.get(rule) == attributor else f"{rule}/{attributor}"


# ---- running ---------------------------------------------------------------------------------------------------
def collect(
    limit: int | None, data_dir: Path | None, reporter=None, k: int | None = None, seed: int = 0, device: str = "cpu"
) -> SanityRun:
    """Evaluate both demo models on both tasks, plainly and with each attributor (diagnosis under every rule).
    Attribution uses the ``CCISettings`` defaults, with ``k`` (when given) and ``seed``."""

    reporter = reporter or Reporter()
    catalog = load_catalog()
    tasks = catalog.tasks.resolve(f"{ORIGINAL},{BG_VARIED}")
    settings = replace(DEFAULTS, k=DEFAULTS.k if k is None else k, seed=seed, counterfactual=True)
    steps = {name: _step(catalog, name, settings) for name in ATTRIBUTORS}
    diagnosis = DiagnosisSettings(rules=tuple(RULES), bootstrap=100, seed=seed)  # intervals unused here
    base: dict[str, Any] = dict(
        data_dir=data_dir, workers=0, device=device, limit=limit, seed=seed, segmenter="dataset"
    )
    run = SanityRun(limit=limit, seed=seed)
    started = time.perf_counter()
    for model in (CLEAN, SHORTCUT):
        adapter = load_model(model, device, catalog=catalog)
        classifiers = ClassifierCache(adapter)
        for cfg in tasks:
            plain = PairRequest(adapter, cfg, catalog, RunOptions(**base), classifiers, reporter)
            evaluate_task(plain)  # warm-up: data, text, caches
            run.evals[(model, cfg.task, "plain")] = _timed(plain)
            for name, step in steps.items():
                options = RunOptions(**base, steps=[step], diagnosis=diagnosis)
                run.evals[(model, cfg.task, name)] = _timed(replace(plain, options=options))
    run.runtime_s = time.perf_counter() - started
    return run


def _step(catalog, name: str, settings):
    """The attributor's step, built through its registered factory (as ``covar-harness run`` does)."""

    return call_with_accepted(catalog.attributors.entry(name).item, **asdict(settings))


def _timed(req: PairRequest) -> Evaluation:
    t0 = time.perf_counter()
    record = evaluate_task(req)
    return Evaluation(record["samples"], time.perf_counter() - t0, record["metrics"]["acc1"])


# ---- scoring ---------------------------------------------------------------------------------------------------
def groups(run: SanityRun, attributor: str) -> dict[str, dict[str, list[dict]]]:
    """The two comparisons: (a) original / correct and (b) bg_varied / errors, rows per model."""
    out: dict[str, dict[str, list[dict]]] = {"original_correct": {}, "bg_varied_errors": {}}
    for model in (CLEAN, SHORTCUT):
        out["original_correct"][model] = [r for r in run.evals[(model, ORIGINAL, attributor)].rows if r["correct"]]
        out["bg_varied_errors"][model] = [r for r in run.evals[(model, BG_VARIED, attributor)].rows if not r["correct"]]
    return out


def score_of(row: dict, rule: str) -> float:
    """The rule's fg-score for a sample; 0.5 (undecided) when the rule gives none."""
    value = (row.get("scores") or {}).get(rule)
    return 0.5 if value is None else float(value)


def auroc(clean: list[dict], shortcut: list[dict], rule: str) -> float | None:
    """P(clean decision scores higher than shortcut decision); None when a side has no sample."""
    from sklearn.metrics import roc_auc_score  # lazy: optional dependency, imported where used

    if not clean or not shortcut:
        return None
    y = [1] * len(clean) + [0] * len(shortcut)
    return float(roc_auc_score(y, [score_of(r, rule) for r in clean + shortcut]))


def auroc_intervals(
    a: tuple[list[dict], list[dict]], b: tuple[list[dict], list[dict]], rule: str, seed: int
) -> dict[str, list[float]]:
    """Bootstrap intervals of the AUROC on (a) and (b) and of their mean (the two comparisons are separate
    samples, so the mean's replicates average one replicate of each)."""

    reps = {
        key: auroc_replicates([score_of(r, rule) for r in clean], [score_of(r, rule) for r in shortcut], N_BOOT, seed)
        for key, (clean, shortcut) in (("auroc_original_correct", a), ("auroc_bg_varied_errors", b))
    }
    out = {key: list(percentile_interval(x)) for key, x in reps.items() if x is not None}
    present = [x for x in reps.values() if x is not None]
    if present:
        out["auroc"] = list(percentile_interval(sum(present) / len(present)))
    return out


def ranking(rules: dict[str, dict]) -> list[str]:
    """Row names by AUROC on original / correct (the discriminating column), best first; rows without one last."""
    return sorted(rules, key=lambda n: -1.0 if rules[n][RANKED_BY] is None else -rules[n][RANKED_BY])


def sensitivity_specificity(rows: list[dict], rule: str) -> dict[str, Any]:
    """The rule against the counterfactual truth on the decisive samples (exactly one region alone keeps the
    decision): ``sensitivity`` = share called bg of the background-sufficient ones, ``specificity`` = share called
    fg of the foreground-sufficient ones, with their counts. An undetermined sample counts as a miss on both."""
    outcomes = [((r.get("counterfactual") or {}).get("outcome"), (r.get("drivers") or {}).get(rule)) for r in rows]
    bg = [driver == "bg" for outcome, driver in outcomes if outcome == "bg-sufficient"]
    fg = [driver == "fg" for outcome, driver in outcomes if outcome == "fg-sufficient"]
    return {
        "sensitivity": sum(bg) / len(bg) if bg else None,
        "specificity": sum(fg) / len(fg) if fg else None,
        "n_bg_sufficient": len(bg),
        "n_fg_sufficient": len(fg),
    }


def paired_differences(run: SanityRun, rules: dict[str, dict], order: list[str]) -> list[dict[str, Any]]:
    """Each ranked row minus the next one, AUROC on original / correct, with a paired bootstrap interval: both
    rows' replicates resample the same samples (same seed, same sizes), so the interval is that of the difference.
    Rows from different attributors score the same images in the same order (checked by sample id; a pair that
    is not aligned gets no interval)."""

    def replicates(name: str):
        part = groups(run, rules[name]["attributor"])["original_correct"]
        rule, (clean, short) = rules[name]["rule"], (part[CLEAN], part[SHORTCUT])
        ids = [r.get("id") for r in clean + short]
        reps = auroc_replicates(
            [score_of(r, rule) for r in clean], [score_of(r, rule) for r in short], N_BOOT, run.seed
        )
        return ids, reps

    out = []
    for upper, lower in zip(order, order[1:]):
        (ids_a, a), (ids_b, b) = replicates(upper), replicates(lower)
        va, vb = rules[upper][RANKED_BY], rules[lower][RANKED_BY]
        if va is None or vb is None or a is None or b is None:
            continue
        aligned = ids_a == ids_b
        interval = list(percentile_interval(np.asarray(a) - np.asarray(b))) if aligned else None
        out.append({"upper": upper, "lower": lower, "difference": va - vb, "interval": interval})
    return out


def truth_is_bg(row: dict) -> bool | None:
    """Counterfactual proxy truth: background alone reproduces the decision and foreground alone does not."""
    outcome = (row.get("counterfactual") or {}).get("outcome")
    return None if outcome is None else outcome == "bg-sufficient"


def agreement(rows: list[dict], rule: str) -> float | None:
    """Share of samples where the rule's driver (bg or not) matches the counterfactual proxy truth."""
    pairs = [(truth_is_bg(r), (r.get("drivers") or {}).get(rule)) for r in rows]
    hits = [truth == (driver == "bg") for truth, driver in pairs if truth is not None and driver is not None]
    return sum(hits) / len(hits) if hits else None


def cost(run: SanityRun, attributor: str) -> tuple[float, float]:
    """(ms per image with the attributor, ratio to the plain evaluation) over all four model x task pairs."""
    n = sum(len(e.rows) for (m, t, a), e in run.evals.items() if a == "plain")
    with_attr = sum(e.seconds for (m, t, a), e in run.evals.items() if a == attributor)
    plain = sum(e.seconds for (m, t, a), e in run.evals.items() if a == "plain")
    return 1000 * with_attr / max(n, 1), with_attr / plain if plain > 0 else float("nan")


def summarise(run: SanityRun) -> dict[str, Any]:
    """The JSON report: per rule row AUROCs with intervals, agreement, cost; the ranking on the discriminating
    column; per attributor cost; the proxy truth and accuracies."""
    rules: dict[str, Any] = {}
    for rule, attributor in ROWS:
        g = groups(run, attributor)
        a = auroc(g["original_correct"][CLEAN], g["original_correct"][SHORTCUT], rule)
        b = auroc(g["bg_varied_errors"][CLEAN], g["bg_varied_errors"][SHORTCUT], rule)
        both = [x for x in (a, b) if x is not None]
        everyone = [r for part in g.values() for rows in part.values() for r in rows]
        ms, ratio = cost(run, attributor)
        rules[row_name(rule, attributor)] = {
            "rule": rule,
            "attributor": attributor,
            "inferred": RULES[rule].inferred,
            "auroc": statistics.fmean(both) if both else None,
            "auroc_original_correct": a,
            "auroc_bg_varied_errors": b,
            "agreement_with_counterfactual": agreement(everyone, rule),
            **sensitivity_specificity(everyone, rule),
            "undetermined_share": _undetermined(everyone, rule),
            "ms_per_image": ms,
            "cost_vs_plain": ratio,
            "intervals": auroc_intervals(
                (g["original_correct"][CLEAN], g["original_correct"][SHORTCUT]),
                (g["bg_varied_errors"][CLEAN], g["bg_varied_errors"][SHORTCUT]),
                rule,
                run.seed,
            ),
        }
    plain_ms = cost(run, "plain")[0]
    g = groups(run, "cci")
    order = ranking(rules)
    return {
        "rules": rules,
        "ranked_by": RANKED_BY,
        "ranking": order,
        "paired_differences": paired_differences(run, rules, order),
        "best_rule": next((n for n in order if rules[n][RANKED_BY] is not None), None),
        "truth": "proxy: the counterfactual region test, not ground truth",
        "bootstrap": {"n_boot": N_BOOT, "seed": run.seed, "unit": "sample, each model's side resampled on its own"},
        "attributors": {a: dict(zip(("ms_per_image", "cost_vs_plain"), cost(run, a))) for a in ATTRIBUTORS},
        "plain_ms_per_image": plain_ms,
        "counterfactual_truth": {
            part: {m: _share_bg(rows) for m, rows in models.items()} for part, models in g.items()
        },
        "n": {part: {m: len(rows) for m, rows in models.items()} for part, models in g.items()},
        "acc1": {m: {t: run.evals[(m, t, "plain")].acc1 for t in (ORIGINAL, BG_VARIED)} for m in (CLEAN, SHORTCUT)},
        "limit": run.limit,
        "runtime_s": run.runtime_s,
    }


def _undetermined(rows: list[dict], rule: str) -> float | None:
    return sum((r.get("scores") or {}).get(rule) is None for r in rows) / len(rows) if rows else None


def _share_bg(rows: list[dict]) -> float | None:
    truths = [t for t in map(truth_is_bg, rows) if t is not None]
    return sum(truths) / len(truths) if truths else None


# ---- output ----------------------------------------------------------------------------------------------------
def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:.3f}"


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    """``0.91 [0.85, 0.96]``: the point estimate and its bootstrap interval."""
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _label(name: str, row: dict) -> str:
    return f"{name} (inferred)" if row.get("inferred") else name


def render(report: dict[str, Any], console) -> None:
    """The per-rule table ranked on the discriminating column, then the proxy truth and the accuracies."""

    columns = [
        "rank",
        "rule",
        "attributor",
        "AUROC orig/correct (ranked)",
        "AUROC bgvar/errors",
        "AUROC mean",
        "minus next (paired)",
        "agrees w/ cf proxy",
        "sens / spec vs cf",
        "undetermined",
        "ms/image",
        "x plain",
    ]
    order = report.get("ranking") or list(report["rules"])
    paired = {d["upper"]: d for d in report.get("paired_differences") or []}
    rows = []
    for i, name in enumerate(order, 1):
        r, ci = report["rules"][name], report["rules"][name].get("intervals") or {}
        diff = paired.get(name)
        rows.append(
            [
                str(i),
                _label(name, r),
                r["attributor"],
                *(_with_interval(r[k], ci.get(k)) for k in (RANKED_BY, "auroc_bg_varied_errors", "auroc")),
                "-" if diff is None else _with_interval(diff["difference"], diff["interval"]),
                _fmt(r["agreement_with_counterfactual"], pct=True),
                f"{_fmt(r.get('sensitivity'))} / {_fmt(r.get('specificity'))}",
                _fmt(r["undetermined_share"], pct=True),
                f"{r['ms_per_image']:.2f}",
                f"{r['cost_vs_plain']:.1f}",
            ]
        )
    best = order.index(report["best_rule"]) if report["best_rule"] in order else None
    print_rows(
        console,
        f"which diagnosis to trust: clean vs shortcut demo model (--limit {report['limit']}; ranked by AUROC on "
        "original/correct; [95% bootstrap interval over samples]; minus next: this row's AUROC minus the next "
        "row's, paired bootstrap; sens / spec: called bg among background-sufficient, fg among foreground-"
        "sufficient decisions)",
        columns,
        rows,
        right=range(3, len(columns)),
        row_styles={best: "bold green"} if best is not None else None,
    )
    _render_footer(report, console)


def _render_footer(report: dict[str, Any], console) -> None:
    n, truth = report["n"], report["counterfactual_truth"]
    console.print(
        f"samples: original/correct clean {n['original_correct'][CLEAN]}, shortcut {n['original_correct'][SHORTCUT]}; "
        f"bg_varied/errors clean {n['bg_varied_errors'][CLEAN]}, shortcut {n['bg_varied_errors'][SHORTCUT]}"
    )
    console.print(
        "counterfactual proxy truth (background alone reproduces the decision, foreground alone does not; a proxy, "
        f"not ground truth): original/correct clean {_fmt(truth['original_correct'][CLEAN], True)}, shortcut "
        f"{_fmt(truth['original_correct'][SHORTCUT], True)}; bg_varied/errors clean "
        f"{_fmt(truth['bg_varied_errors'][CLEAN], True)}, shortcut {_fmt(truth['bg_varied_errors'][SHORTCUT], True)}"
    )
    console.print("(inferred): the paper's rule as reconstructed from its text; the exact rule is not published")
    acc = report["acc1"]
    console.print(
        "acc1: "
        + "; ".join(
            f"{markup(m)} {_fmt(acc[m][ORIGINAL], True)} original, {_fmt(acc[m][BG_VARIED], True)} bg_varied"
            for m in acc
        )
    )
    console.print(f"plain forward {report['plain_ms_per_image']:.2f} ms/image; runtime {report['runtime_s']:.1f} s")


def cmd_sanity(args: Namespace) -> int:
    """Handler of ``covar-harness sanity``."""

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    if args.json is not None:
        _check_writable(args.json)  # before minutes of evaluation, not after
    with progress_reporter() as reporter:
        run = collect(args.limit, args.data_dir, reporter, seed=args.seed, device=args.device)
    report = summarise(run)
    render(report, console())
    if args.json is not None:
        text = json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
        try:
            atomic_write(args.json, lambda fh: fh.write(text))
        except OSError as exc:
            raise UsageError(f"cannot write --json {str(args.json)!r}: {exc}") from exc
    return 0


def _finite(value: Any) -> Any:
    """The report with NaN / infinity as null: strict JSON that every reader accepts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _check_writable(path: Path) -> None:
    """--json names a file in a folder that exists or can be made, and is not itself a folder."""

    if path.is_dir():
        raise UsageError(f"--json {str(path)!r} is a folder; name a file")
    probe = path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--json {str(path)!r}: {str(probe)!r} is not a writable folder")
