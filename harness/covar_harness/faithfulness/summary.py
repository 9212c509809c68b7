"""Per-method summaries (means with bootstrap intervals, mean curves), the result file, and the table rows with
the random baseline's ratio."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covar_harness.common.metrics import bootstrap_interval, source_clusters
from covar_harness.common.safe_files import slug
from covar_harness.faithfulness.evaluate import MethodRun
from covar_harness.faithfulness.settings import FaithfulnessSettings
from covar_harness.results.faithfulness import BASELINE, METRICS, SCHEMA

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
) -> dict[str, Any]:
    """The JSON written per model x task x attributor: headline metrics, intervals, mean curves, per-sample AUCs."""
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
        "curves": mean_curves(run),
        "settings": settings.record(),
        "attribution_settings": cci,
        "samples": samples,
    }


def result_file(output_dir: Path, model: str, task: str, method: str) -> Path:
    """``<output_dir>/<slug(model)>/<slug(task)>/<slug(method)>.json``."""

    return Path(output_dir) / slug(model) / slug(task) / f"{slug(method)}.json"


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: Any, base: Any) -> str:
    if value is None or base is None or base == 0:
        return "-"
    return f"{value / base:.2f}x"


TABLE_COLUMNS = (
    "method",
    "model",
    "task",
    "n",
    "deletion AUC",
    "del / random",
    "insertion AUC",
    "ins / random",
    "deletion AUC (tokens)",
    "del tokens / random",
    "insertion AUC (tokens)",
    "ins tokens / random",
    "pointing energy",
    "rank accuracy",
)


def table_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per method x model x task (methods grouped, the random baseline last), with each AUC's ratio
    to the random baseline's on the same model and task (deletion: lower is better; insertion: higher)."""
    base = {(r["model"], r["task"]): r for r in results if r["attributor"] == BASELINE}
    order = sorted(results, key=lambda r: (r["attributor"] == BASELINE, r["attributor"], r["model"], r["task"]))
    rows = []
    for r in order:
        b = base.get((r["model"], r["task"]), {})
        rows.append(
            [
                r["attributor"] + (f" ({r['error']})" if r.get("error") else ""),
                r["model"],
                r["task"],
                str(r["n_samples"]),
                _num(r["deletion_auc"]),
                _ratio(r["deletion_auc"], b.get("deletion_auc")),
                _num(r["insertion_auc"]),
                _ratio(r["insertion_auc"], b.get("insertion_auc")),
                _num(r["deletion_tokens_auc"]),
                _ratio(r["deletion_tokens_auc"], b.get("deletion_tokens_auc")),
                _num(r["insertion_tokens_auc"]),
                _ratio(r["insertion_tokens_auc"], b.get("insertion_tokens_auc")),
                _num(r["pointing_energy"]),
                _num(r["relevance_rank_accuracy"]),
            ]
        )
    return rows
