"""Paired comparison of two models on the same samples (docs/design.md section 10, issue 26): is model A really
better than B on a task, or is the gap within what resampling the same images gives?

Pairing: the two models' sample logs (``--log-samples``) are joined on the sample id (``file``); only samples
both evaluated count. Accuracy: the exact McNemar test on the discordant samples (right for one model only),
and a paired bootstrap interval of the difference. BG-Er and BG-Er minus its null: the errors differ between the
models, so these are compared as ratios over the SAME resampled samples: each bootstrap replicate draws the
samples once (whole source objects where every sample names one, ``source_id``: COVAR's variants of one object are
not independent) and recomputes each model's BG-Er over its own errors among them. Both models' diagnoses must use
the same headline rule. McNemar treats samples as independent; with source objects the bootstrap is the honest one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.metrics import mcnemar_exact, paired_ratio_difference, source_clusters
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
    n: int  # paired samples (for BG-Er: samples; each model's errors among them count)
    unit: str  # source_id | sample

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
    logs = [files.samples_path(p) for p in (path_a, path_b)]
    for log in logs:
        if not log.is_file():
            raise ValueError(f"no sample log {log.name}: run with --log-samples to compare")
    a, b = (read_samples(log) for log in logs)
    by_id = {str(r.get("file", r["index"])): r for r in b}
    rows_a = [r for r in a if str(r.get("file", r["index"])) in by_id]
    rows_b = [by_id[str(r.get("file", r["index"]))] for r in rows_a]
    if not rows_a:
        raise ValueError("the two models share no sample")
    configs = [files.load(p)["config"] for p in (path_a, path_b)]
    return rows_a, rows_b, configs[0], configs[1]


def _units(rows: list[dict]) -> tuple[list[str] | None, str]:
    clusters = source_clusters([r.get("source_id") for r in rows])
    return clusters, "source_id" if clusters is not None else "sample"


def compare_rows(task: str, rows_a: list[dict], rows_b: list[dict], n_boot: int, seed: int) -> list[Comparison]:
    """Accuracy (acc1): exact McNemar and the paired bootstrap of the difference."""
    import numpy as np

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
    """BG-Er and BG-Er minus its null, each model over its own errors (with a mask) among the paired samples."""

    heads = [_headline_rule(c) for c in (config_a, config_b)]
    if heads[0] is None or heads[1] is None:
        return []
    if heads[0] != heads[1]:
        notes.append(f"{task}: BG-Er not compared: headline rules differ ({heads[0]} vs {heads[1]})")
        return []
    clusters, unit = _units(rows_a)
    out = []
    for metric in ("bg_er", "bg_er_minus_null"):
        if metric == "bg_er_minus_null" and not all(_has_null(c) for c in (config_a, config_b)):
            notes.append(f"{task}: bg_er_minus_null not compared: the headline rule has no null in both results")
            continue
        parts = [_bg_parts(rows, metric) for rows in (rows_a, rows_b)]
        if any(p is None for p in parts):
            notes.append(f"{task}: {metric} not compared: a sample log lacks the null (sample log version 1)")
            continue
        (num_a, den_a), (num_b, den_b) = parts
        diff, interval, p = paired_ratio_difference(num_a, den_a, num_b, den_b, clusters, n_boot, seed)
        if diff is None:
            continue
        a, b = float(num_a.sum() / den_a.sum()), float(num_b.sum() / den_b.sum())
        out.append(Comparison(task, metric, a, b, diff, interval, p, "paired bootstrap", len(rows_a), unit))
    return out


def _headline_rule(config: dict) -> str | None:
    rules = (config.get("diagnosis") or {}).get("rules")
    return str(rules[0]) if isinstance(rules, list) and rules else None


def _has_null(config: dict) -> bool:
    """Whether the result's headline rule has a null (``null_draws`` > 0 and a rule reading importances): its
    ``bg_er_null`` (results before issue 23 also carried ``bg_er_minus_null``; neither is needed per sample)."""
    diag = config.get("diagnosis") or {}
    head = (diag.get("by_rule") or {}).get((diag.get("rules") or [None])[0]) or {}
    return files.is_number(head.get("bg_er_null")) or files.is_number(head.get("bg_er_minus_null"))


def _bg_parts(rows: list[dict], metric: str) -> Any:
    """(numerator, denominator) per sample: errors with a mask count in the denominator; a background-driven one
    counts 1 (``bg_er``) or 1 minus its null's background share (``bg_er_minus_null``) in the numerator."""
    import numpy as np

    error = np.asarray([not r["correct"] and r.get("error_type") is not None for r in rows], dtype=float)
    bg = np.asarray([r.get("error_type") == "bg" for r in rows], dtype=float)
    if metric == "bg_er":
        return bg * error, error
    if any(e and "null_fg" not in r for e, r in zip(error, rows)):
        return None
    null_bg = np.asarray([0.0 if r.get("null_fg") is None else 1.0 - r["null_fg"] for r in rows], dtype=float)
    return (bg - null_bg) * error, error
