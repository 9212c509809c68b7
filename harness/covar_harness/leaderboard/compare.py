"""Paired comparisons (docs/design.md section 10, issues 26 and 23): is model A really better than B on a task, or
one model different on subset A than on subset B, or is the gap within what resampling the same images gives?

Two models (``compare``): their sample logs (``--log-samples``) are joined on the sample id (``file``); only
samples both evaluated count. Accuracy: the exact McNemar test on the discordant samples (right for one model
only), and a paired bootstrap interval of the difference. Raw BG-Er under every driver rule both results logged,
and the counterfactual truth ``bg_sufficient_rate``: the errors differ between the models, so these are compared
as ratios over the SAME resampled samples: each bootstrap replicate draws the samples once (whole source objects
where every sample names one, ``source_id``: COVAR's variants of one object are not independent) and recomputes
each model's share over its own errors among them. McNemar treats samples as independent; with source objects the
bootstrap is the honest one. BG-Er minus its null is not compared: it is not a share of errors (issue 23).

One model, two subsets (``compare_subsets``, COVAR Scale vs Crop): the samples differ but the source objects are
shared, so the bootstrap draws source objects and each brings its samples in both subsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covar_harness.catalog.registry import UsageError
from covar_harness.common.metrics import mcnemar_exact, paired_ratio_difference, source_clusters
from covar_harness.diagnosis.rules import Evidence, region_truth, titled
from covar_harness.results import files
from covar_harness.results.validation import validate
from covar_harness.run.rescore import read_samples


@dataclass
class Comparison:
    task: str
    metric: str
    a: float | None
    b: float | None
    difference: float | None  # a - b
    interval: tuple[float, float] | None  # paired bootstrap, 95 %
    p: float | None
    test: str  # mcnemar | paired bootstrap
    n: int  # paired samples (for BG-Er: samples; each model's errors among them count); between subsets: sources
    unit: str  # source_id | sample
    rule: str | None = None  # the driver rule behind a BG-Er row

    @property
    def title(self) -> str:
        """The metric as a table shows it, a BG-Er row naming its rule: "bg_er (area, harness rule)"."""
        return self.metric if self.rule is None else titled(self.metric, self.rule)

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p is not None and self.p < alpha


def find_results(folder: Path, model: str) -> dict[str, Path]:
    """{task name: result file} of one model under ``folder`` (valid classification results only)."""
    paths, _ = files.result_files(Path(folder))
    out: dict[str, Path] = {}
    for path in paths:
        try:
            obj = files.load(path)
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict) and not validate(obj) and obj["model"]["spec"] == model:
            out[obj["task"]["name"]] = path
    return out


def compare(
    folder: Path, model_a: str, model_b: str, tasks: list[str] | None = None, n_boot: int = 1000, seed: int = 0
) -> tuple[list[Comparison], list[str]]:
    """Every task both models have results with sample logs for: (comparisons, notes on what was left out)."""
    found_a, found_b = find_results(folder, model_a), find_results(folder, model_b)
    for model, found in ((model_a, found_a), (model_b, found_b)):
        if not found:
            raise UsageError(f"no results of model {model!r} under {folder}")
    shared = [t for t in found_a if t in found_b and (tasks is None or t in tasks)]
    if not shared:
        raise UsageError(f"{model_a!r} and {model_b!r} share no task under {folder}")
    out: list[Comparison] = []
    notes: list[str] = []
    for task in shared:
        try:
            rows_a, rows_b, config_a, config_b = _paired_rows(found_a[task], found_b[task])
        except ValueError as exc:
            notes.append(f"{task}: {exc}")
            continue
        out += compare_rows(task, rows_a, rows_b, n_boot, seed)
        out += compare_diagnosis(task, rows_a, rows_b, config_a, config_b, n_boot, seed, notes)
    return out, notes


def _paired_rows(path_a: Path, path_b: Path) -> tuple[list[dict], list[dict], dict, dict]:
    """Both sample logs restricted to the samples both evaluated, in the same order (joined on ``file``)."""
    (a, config_a), (b, config_b) = _logged(path_a), _logged(path_b)
    by_id = {str(r.get("file", r["index"])): r for r in b}
    rows_a = [r for r in a if str(r.get("file", r["index"])) in by_id]
    rows_b = [by_id[str(r.get("file", r["index"]))] for r in rows_a]
    if not rows_a:
        raise ValueError("the two models share no sample")
    return rows_a, rows_b, config_a, config_b


def _units(rows: list[dict]) -> tuple[list[str] | None, str]:
    clusters = source_clusters([r.get("source_id") for r in rows])
    return clusters, "source_id" if clusters is not None else "sample"


def compare_rows(task: str, rows_a: list[dict], rows_b: list[dict], n_boot: int, seed: int) -> list[Comparison]:
    """Accuracy (acc1): exact McNemar and the paired bootstrap of the difference."""
    right_a = np.asarray([bool(r["correct"]) for r in rows_a], dtype=float)
    right_b = np.asarray([bool(r["correct"]) for r in rows_b], dtype=float)
    clusters, unit = _units(rows_a)
    ones = np.ones_like(right_a)
    diff, interval, _ = paired_ratio_difference(right_a, ones, right_b, ones, clusters, n_boot, seed)
    a_only = int(((right_a == 1) & (right_b == 0)).sum())
    b_only = int(((right_a == 0) & (right_b == 1)).sum())
    p = mcnemar_exact(a_only, b_only)
    acc_a, acc_b = float(right_a.mean()), float(right_b.mean())
    return [Comparison(task, "acc1", acc_a, acc_b, diff, interval, p, "mcnemar", len(rows_a), unit)]


def compare_diagnosis(
    task: str,
    rows_a: list[dict],
    rows_b: list[dict],
    config_a: dict,
    config_b: dict,
    n_boot: int,
    seed: int,
    notes: list[str],
) -> list[Comparison]:
    """Raw BG-Er under every driver rule both results logged, each model over its own errors (with a mask) among
    the paired samples, and the counterfactual truth beside it (``bg_sufficient_rate``). No "BG-Er minus null":
    it is not a share of errors (issue 23), and the difference of two raw shares on the same images needs none."""
    rules_a, rules_b = (_rules(c) for c in (config_a, config_b))
    if not rules_a or not rules_b:
        return []
    shared = [r for r in rules_a if r in rules_b]
    if not shared:
        notes.append(f"{task}: BG-Er not compared: the results share no driver rule ({rules_a[0]} vs {rules_b[0]})")
        return []
    clusters, unit = _units(rows_a)
    sides = ((rows_a, rules_a[0]), (rows_b, rules_b[0]))
    return ratio_comparisons(task, sides, shared, clusters, None, unit, len(rows_a), n_boot, seed, notes)


def ratio_comparisons(
    task: str,
    sides: tuple[tuple[list[dict], str], tuple[list[dict], str]],
    rules: list[str],
    clusters_a: list[str] | None,
    clusters_b: list[str] | None,
    unit: str,
    n: int,
    n_boot: int,
    seed: int,
    notes: list[str],
) -> list[Comparison]:
    """BG-Er per rule and ``bg_sufficient_rate`` of side a minus side b, each a ratio over the side's own errors
    (``paired_ratio_difference``); ``sides``: (sample rows, the result's headline rule) per side. A rule that
    decided no error on a side, or a truth no error was tested for, is left out with a note."""
    out = []
    metrics: list[tuple[str, str | None]] = [("bg_er", rule) for rule in rules] + [("bg_sufficient_rate", None)]
    for metric, rule in metrics:
        (rows_a, head_a), (rows_b, head_b) = sides
        parts_a, parts_b = _ratio_parts(rows_a, metric, rule, head_a), _ratio_parts(rows_b, metric, rule, head_b)
        if parts_a is None or parts_b is None:
            what = f"{metric} ({rule})" if rule else metric
            notes.append(f"{task}: {what} not compared: no error decided (or tested) on one side")
            continue
        (num_a, den_a), (num_b, den_b) = parts_a, parts_b
        diff, interval, p = paired_ratio_difference(
            num_a, den_a, num_b, den_b, clusters_a, n_boot, seed, clusters_b=clusters_b
        )
        if diff is None:
            continue
        a, b = float(num_a.sum() / den_a.sum()), float(num_b.sum() / den_b.sum())
        out.append(Comparison(task, metric, a, b, diff, interval, p, "paired bootstrap", n, unit, rule))
    return out


def _rules(config: dict) -> list[str]:
    rules = (config.get("diagnosis") or {}).get("rules")
    return [str(r) for r in rules] if isinstance(rules, list) else []


def _driver(row: dict, rule: str, head: str) -> str | None:
    """The sample's driver under ``rule``: ``drivers`` when the run logged several rules, else ``driver``."""
    drivers = row.get("drivers")
    if isinstance(drivers, dict):
        return drivers.get(rule)
    return row.get("driver") if rule == head else None


def _ratio_parts(rows: list[dict], metric: str, rule: str | None, head: str) -> Any:
    """(numerator, denominator) per sample, or None when the ratio says nothing. ``bg_er``: errors with a mask
    count in the denominator, those ``rule`` calls background-driven in the numerator (None when the rule decided
    none of them, as the result's BG-Er is null). ``bg_sufficient_rate``: errors whose region test ran, those
    whose wrong prediction survives with the background alone (``diagnosis.rules.region_truth``)."""
    error = np.asarray([not r["correct"] and r.get("error_type") is not None for r in rows], dtype=float)
    if metric == "bg_er":
        assert rule is not None
        drivers = [_driver(r, rule, head) for r in rows]
        if not any(e and d is not None for e, d in zip(error, drivers)):
            return None
        return np.asarray([d == "bg" for d in drivers], dtype=float) * error, error
    truth = [region_truth(Evidence.of_row(r), r["pred"])[0] for r in rows]  # the result's own definition
    tested = error * np.asarray([t is not None for t in truth], dtype=np.float64)
    if not tested.any():
        return None
    return np.asarray([t is True for t in truth], dtype=np.float64) * tested, tested


# ---- one model, two subsets of the same source objects ----------------------------------------------------------
def compare_subsets(
    folder: Path, model: str, task_a: str, task_b: str, n_boot: int = 1000, seed: int = 0
) -> tuple[list[Comparison], list[str]]:
    """One model on two subsets that share source objects (COVAR Scale vs Crop): accuracy, raw BG-Er under every
    rule both results logged and ``bg_sufficient_rate`` of ``task_a`` minus ``task_b``, with a bootstrap paired
    by source object (``paired_ratio_difference(..., clusters_b=...)``): a replicate draws source objects once and
    each brings its samples in both subsets. The point estimates are the two results' own full-subset shares.
    Why: a difference between subsets is what object size (or any COVAR factor) does; two independent intervals
    ignore that the subsets show the same objects, and a per-sample bootstrap ignores that variants of one
    object are not independent."""
    found = find_results(folder, model)
    for task in (task_a, task_b):
        if task not in found:
            raise UsageError(f"no result of {model!r} on {task} under {folder}")
    try:
        (rows_a, config_a), (rows_b, config_b) = (_logged(found[t]) for t in (task_a, task_b))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    clusters_a, clusters_b = (source_clusters([r.get("source_id") for r in rows]) for rows in (rows_a, rows_b))
    if clusters_a is None or clusters_b is None:
        raise UsageError(f"{task_a} and {task_b}: every sample needs a source_id to pair subsets by source object")
    shared = set(clusters_a) & set(clusters_b)
    if not shared:
        raise UsageError(f"{task_a} and {task_b} share no source object: compare them as independent results")
    units = len(set(clusters_a) | set(clusters_b))
    notes = [f"{task_a} vs {task_b}: {len(shared)} of {units} source objects appear in both subsets"]
    label = f"{task_a} - {task_b}"
    acc = _subset_accuracy(label, rows_a, rows_b, clusters_a, clusters_b, units, n_boot, seed)
    rules_a, rules_b = _rules(config_a), _rules(config_b)
    shared_rules = [r for r in rules_a if r in rules_b]
    if not shared_rules:
        return [acc], notes
    sides = ((rows_a, rules_a[0]), (rows_b, rules_b[0]))
    diagnosis = ratio_comparisons(
        label, sides, shared_rules, clusters_a, clusters_b, "source_id", units, n_boot, seed, notes
    )
    return [acc, *diagnosis], notes


def _subset_accuracy(
    label: str,
    rows_a: list[dict],
    rows_b: list[dict],
    clusters_a: list[str],
    clusters_b: list[str],
    units: int,
    n_boot: int,
    seed: int,
) -> Comparison:
    """acc1 of subset a minus subset b, bootstrapped by source object (no McNemar: the samples differ)."""
    right_a, right_b = (np.asarray([bool(r["correct"]) for r in rows], dtype=float) for rows in (rows_a, rows_b))
    ones_a, ones_b = np.ones_like(right_a), np.ones_like(right_b)
    diff, interval, p = paired_ratio_difference(
        right_a, ones_a, right_b, ones_b, clusters_a, n_boot, seed, clusters_b=clusters_b
    )
    a, b = float(right_a.mean()), float(right_b.mean())
    return Comparison(label, "acc1", a, b, diff, interval, p, "paired bootstrap", units, "source_id")


def _logged(path: Path) -> tuple[list[dict], dict]:
    """A result's sample log rows and its config; ValueError when it has no log."""
    log = files.samples_path(path)
    if not log.is_file():
        raise ValueError(f"no sample log {log.name}: run with --log-samples to compare")
    return read_samples(log), files.load(path)["config"]
