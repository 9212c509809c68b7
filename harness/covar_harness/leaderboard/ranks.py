"""Rank intervals (docs/design.md section 10, issue 26): how sure is a model's place in each column?

Per family and task, each model's headline metric is drawn 1000 times (seeded) from a normal with the spread of
its own 95 % bootstrap interval (sd = width / 3.92); in each draw the models are ranked (1 = best, ties share the
better rank) and the 2.5th / 97.5th percentiles of a model's ranks are its interval. Why from the intervals: the
leaderboard reads result files, not sample logs; drawing the models independently ignores that they saw the same
images, so the intervals are conservative (``covar-harness compare`` gives the paired test).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from covar_harness.results import files

N_DRAWS = 1000
CAPTION = (
    "Rank per column (1 = best headline metric) and its 95% interval over 1000 draws of each model's value from "
    "a normal with the spread of its own bootstrap interval. Models are drawn independently, which is conservative "
    "for models evaluated on the same images; covar-harness compare gives the paired test."
)


def _value_and_sd(rec: dict) -> tuple[float, float] | None:
    metric = rec["task"].get("headline") or "acc1"
    metrics, intervals = rec.get("metrics"), rec.get("intervals")  # read defensively: any file validate accepts
    value: Any = metrics.get(metric) if isinstance(metrics, dict) else None
    if not files.is_number(value):
        return None
    interval: Any = intervals.get(metric) if isinstance(intervals, dict) else None
    if not (isinstance(interval, list) and len(interval) == 2 and all(files.is_number(v) for v in interval)):
        return float(value), 0.0
    return float(value), (float(interval[1]) - float(interval[0])) / 3.92


def rank_cells(values: list[tuple[float, float]], seed: int = 0) -> list[str]:
    """'point [low, high]' per model from (value, sd) pairs."""

    mean = np.array([v for v, _ in values])
    sd = np.array([s for _, s in values])
    draws = mean + sd * np.random.default_rng(seed).standard_normal((N_DRAWS, len(values)))
    ranks = 1 + (draws[:, None, :] > draws[:, :, None]).sum(axis=2)  # (draws, models): how many are better, + 1
    point = 1 + (mean[None, :] > mean[:, None]).sum(axis=1)
    low = np.percentile(ranks, 2.5, axis=0, method="lower")
    high = np.percentile(ranks, 97.5, axis=0, method="higher")
    return [f"{int(p)} [{int(lo)}, {int(hi)}]" for p, lo, hi in zip(point, low, high)]


def rank_rows(records: list[dict], family: str, tasks: list[str]) -> list[list[Any]]:
    """One row per model of ``family`` (task names ``family/<task>``): its rank cell per task; rows only when at
    least two models have the task."""
    by_model: dict[str, dict[str, dict]] = {}
    for rec in records:
        name = rec["task"]["name"]
        if name.split("/", 1)[0] == family:
            by_model.setdefault(rec["model"]["spec"], {})[name] = rec
    if len(by_model) < 2:
        return []
    models = list(by_model)
    columns: dict[str, dict[str, str]] = {}
    for task in tasks:
        have = [(m, _value_and_sd(by_model[m][task])) for m in models if task in by_model[m]]
        usable = [(m, v) for m, v in have if v is not None]
        if len(usable) >= 2:
            columns[task] = dict(zip([m for m, _ in usable], rank_cells([v for _, v in usable])))
    if not columns:
        return []
    return [[m, *(columns.get(t, {}).get(m) for t in tasks)] for m in models]
