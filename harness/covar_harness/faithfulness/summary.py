"""Per-method summaries (means with bootstrap intervals, mean curves), each method's paired per-image differences
from the random baselines, the result file, and the terminal tables' rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covar_harness.common.metrics import BOOTSTRAP_VERSION, bootstrap_interval, paired_ratio_difference, source_clusters
from covar_harness.common.safe_files import slug
from covar_harness.faithfulness.settings import FaithfulnessSettings
from covar_harness.faithfulness.step import MethodRun
from covar_harness.results.faithfulness import BASELINES, COLUMNS, METRICS, PAIRED_TITLES, SCHEMA, paired_rows

CURVES = ("deletion", "insertion", "deletion_tokens", "insertion_tokens")


def metric_summary(rows: Sequence[dict[str, Any]], name: str, settings: FaithfulnessSettings) -> dict[str, Any]:
    """{mean, interval, n} of one metric over the samples that have it; the bootstrap resamples whole source
    objects when every sample has a ``source_id`` (``metrics.source_clusters``)."""
    kept = [r for r in rows if r.get(name) is not None]
    if not kept:
        return {"mean": None, "interval": None, "n": 0}
    values = np.asarray([r[name] for r in kept], dtype=np.float64)
    interval = None
    if settings.bootstrap:
        clusters = source_clusters([r.get("source_id") for r in kept])
        interval = bootstrap_interval(values, n_boot=settings.bootstrap, seed=settings.seed, clusters=clusters)
    return {"mean": float(values.mean()), "interval": None if interval is None else list(interval), "n": len(kept)}


def paired_difference(
    rows: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], name: str, settings: FaithfulnessSettings
) -> dict[str, Any] | None:
    """{mean, interval, p, n} of ``name`` minus the baseline's on the same images (paired by sample index), or
    None when no image has both. The paired bootstrap of ``metrics.paired_ratio_difference`` (each denominator 1:
    a difference of means), resampling whole source objects when every image has a ``source_id``."""
    theirs = {r["index"]: r.get(name) for r in base}
    pairs = [(r, theirs[r["index"]]) for r in rows if r.get(name) is not None and theirs.get(r["index"]) is not None]
    if not pairs:
        return None
    a = np.asarray([r[name] for r, _ in pairs], dtype=np.float64)
    b = np.asarray([v for _, v in pairs], dtype=np.float64)
    ones = np.ones_like(a)
    clusters = source_clusters([r.get("source_id") for r, _ in pairs])
    diff, interval, p = paired_ratio_difference(
        a, ones, b, ones, clusters=clusters, n_boot=max(settings.bootstrap, 1), seed=settings.seed
    )
    if not settings.bootstrap:
        interval, p = None, None
    return {"mean": diff, "interval": None if interval is None else list(interval), "p": p, "n": len(pairs)}


def paired_differences(
    run: MethodRun, runs: dict[str, MethodRun], settings: FaithfulnessSettings
) -> dict[str, dict[str, Any]]:
    """{baseline: {metric: difference}} against every random baseline that ran on the pair; a baseline only
    against the ones after it in ``BASELINES`` (random minus random-patch, not its mirror image)."""
    out: dict[str, dict[str, Any]] = {}
    skip = BASELINES[: BASELINES.index(run.method) + 1] if run.method in BASELINES else ()
    for base in BASELINES:
        other = runs.get(base)
        if base in skip or other is None or other.error or run.error:
            continue
        entries = {m: paired_difference(run.rows, other.rows, m, settings) for m in METRICS}
        out[base] = {m: e for m, e in entries.items() if e is not None}
    return out


def mean_curves(run: MethodRun) -> dict[str, dict[str, list[float]]]:
    """{curve: {x, mean}} over the samples."""
    out = {}
    for name in CURVES:
        ys = [r[f"{name}_curve"] for r in run.rows if f"{name}_curve" in r]
        if ys and name in run.x:
            out[name] = {"x": run.x[name], "mean": np.asarray(ys, dtype=np.float64).mean(axis=0).tolist()}
    return out


def result_object(
    model: str,
    task: str,
    run: MethodRun,
    settings: FaithfulnessSettings,
    cci: dict[str, Any],
    n_failed: int,
    notes: Sequence[str] = (),
    paired: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON written per model x task x attributor: headline metrics, intervals, the paired differences from
    the random baselines (:func:`paired_differences`), mean curves, per-sample AUCs."""
    metrics = {name: metric_summary(run.rows, name, settings) for name in METRICS}
    samples = [{k: v for k, v in r.items() if not k.endswith("_curve")} for r in run.rows]
    return {
        "schema": SCHEMA,
        "model": model,
        "task": task,
        "attributor": run.method,
        "error": run.error or None,
        "n_samples": len(run.rows),
        "n_failed_images": n_failed,
        "notes": list(notes),
        **{name: m["mean"] for name, m in metrics.items()},
        "metrics": metrics,
        "paired": paired or {},
        "curves": mean_curves(run),
        "settings": {**settings.record(), "bootstrap": BOOTSTRAP_VERSION},  # how the intervals were drawn
        "attribution_settings": cci,
        "samples": samples,
    }


def result_file(output_dir: Path, model: str, task: str, method: str) -> Path:
    """``<output_dir>/<slug(model)>/<slug(task)>/<slug(method)>.json``."""

    return Path(output_dir) / slug(model) / slug(task) / f"{slug(method)}.json"


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


TABLE_COLUMNS = ("method", "model", "task", "n", *(title for _, title in COLUMNS))
PAIRED_COLUMNS = ("method", "model", "task", "vs", "n", *PAIRED_TITLES)


def _order(r: dict[str, Any]) -> tuple[int, str, str, str]:
    base = BASELINES.index(r["attributor"]) if r["attributor"] in BASELINES else -1
    return (base, r["attributor"], r["model"], r["task"])


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per method x model x task (methods grouped, the random baselines last): each metric's mean."""
    rows = []
    for r in sorted(results, key=_order):
        name = r["attributor"] + (f" ({r['error']})" if r.get("error") else "")
        rows.append([name, r["model"], r["task"], str(r["n_samples"]), *(_num(r.get(m)) for m, _ in COLUMNS)])
    return rows


def paired_table_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per method x model x task x baseline: each metric's paired difference with its interval (the
    leaderboard's ``paired_rows``, with the task)."""
    metrics = [m for m, _ in COLUMNS]
    out = []
    for r in sorted(results, key=_order):
        for row in paired_rows([r], metrics):
            out.append([row[0], row[1], r["task"], row[2], str(row[3]), *(c or "-" for c in row[4:])])
    return out
