"""Per-group accuracy, worst-group accuracy and the average-minus-worst gap (Waterbirds, Sagawa et al. 2020).

A task opts in by giving its samples a ``group`` meta (e.g. ``"waterbird on land"``). With two groups or more the
evaluator adds ``worst_group_acc`` and ``group_acc_gap`` to the metrics, and the per-group accuracies and counts to
``config.groups``: metric names stay simple names, one per quantity, whatever the groups are called. One group
alone (a CounterAnimals half) has no worst group, so it gets none of these.

The average the gap starts from: acc1 (every evaluated sample counts once), unless the SampleSet carries
``group_weights``. Then ``adj_acc_avg``, the group accuracies weighted by those weights, is reported too and the gap
is taken from it: WILDS's Waterbirds ``adj_acc_avg`` weights by the training split's group sizes (3498 / 184 / 56 /
1057 on the release), because the test split's groups are balanced differently from the training distribution,
and published Waterbirds tables report that average.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def group_accuracies(correct: Sequence[bool], groups: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """``{group: {"acc": fraction correct, "n": samples}}`` over the samples that name a group, sorted by name."""
    if len(correct) != len(groups):
        raise ValueError(f"{len(correct)} correctness flags for {len(groups)} group labels")
    hits: dict[str, list[int]] = {}
    for ok, group in zip(correct, groups):
        if group is None or group == "":
            continue
        tally = hits.setdefault(str(group), [0, 0])
        tally[0] += int(bool(ok))
        tally[1] += 1
    return {g: {"acc": right / n, "n": n} for g, (right, n) in sorted(hits.items())}


def group_summary(
    correct: Sequence[bool], groups: Sequence[Any], weights: Mapping[str, float] | None = None
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, per-group accuracies) for samples with groups: worst_group_acc, group_acc_gap (and adj_acc_avg with
    ``weights``); acc and n per group (and its weight).

    Both empty when fewer than two groups are named (no groups, or one: no worst group to speak of). The average is
    plain accuracy over every evaluated sample (group_DRO's test average); when every sample names a group it is a
    weighted mean of the group accuracies, so the gap is never negative. With ``weights`` (group -> weight, e.g.
    the training split's group sizes) the average is ``adj_acc_avg`` = sum(w_g acc_g) / sum(w_g) over the groups
    evaluated (a group without a weight weighs 0), and the gap is taken from it.
    """
    per_group = group_accuracies(correct, groups)
    if len(per_group) < 2:
        return {}, {}
    worst = min(entry["acc"] for entry in per_group.values())
    adjusted = adjusted_average(per_group, weights)
    if adjusted is None:
        average = sum(bool(ok) for ok in correct) / len(correct)
        return {"worst_group_acc": worst, "group_acc_gap": average - worst}, per_group
    for name, entry in per_group.items():
        entry["weight"] = float((weights or {}).get(name, 0.0))
    return {"worst_group_acc": worst, "adj_acc_avg": adjusted, "group_acc_gap": adjusted - worst}, per_group


def adjusted_average(per_group: dict[str, dict[str, Any]], weights: Mapping[str, float] | None) -> float | None:
    """sum(w_g acc_g) / sum(w_g) over the evaluated groups; None without weights or when they sum to 0 there."""
    if not weights:
        return None
    total = sum(float(weights.get(g, 0.0)) for g in per_group)
    if total <= 0:
        return None
    return sum(float(weights.get(g, 0.0)) * entry["acc"] for g, entry in per_group.items()) / total


def group_intervals(
    correct: Sequence[bool],
    groups: Sequence[Any],
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
    weights: Mapping[str, float] | None = None,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of worst_group_acc, group_acc_gap (when every sample names a group, or with
    ``weights``) and adj_acc_avg (with ``weights``), as :func:`group_summary` computes them.

    Stratified: each group is resampled within itself, so every replicate keeps every group at its size (a
    plain resample could leave the worst group out). Empty with fewer than two groups.
    """

    flags = np.asarray(correct, dtype=float)
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        if group is not None and group != "":
            members.setdefault(str(group), []).append(i)
    if len(members) < 2:
        return {}
    rng = np.random.default_rng(seed)
    names = sorted(members)
    draws = np.stack(
        [
            flags[members[g]][rng.integers(0, len(members[g]), size=(n_boot, len(members[g])))].mean(axis=1)
            for g in names
        ],
        axis=1,
    )  # (n_boot, n_groups) accuracies
    worst = draws.min(axis=1)
    tail = 50.0 * (1.0 - level)

    def span(values: Any) -> list[float]:
        return [float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))]

    out = {"worst_group_acc": span(worst)}
    w = np.array([float((weights or {}).get(g, 0.0)) for g in names])
    if w.sum() > 0:  # the gap from adj_acc_avg, a weighted mean of the groups: >= 0
        adjusted = draws @ (w / w.sum())
        out["adj_acc_avg"] = span(adjusted)
        out["group_acc_gap"] = span(np.maximum(adjusted - worst, 0.0))
        return out
    sizes = np.array([len(members[g]) for g in names], dtype=float)
    if sizes.sum() == len(flags):  # the average is then a weighted mean of the groups: the gap is >= 0
        out["group_acc_gap"] = span(np.maximum(draws @ (sizes / sizes.sum()) - worst, 0.0))
    return out


def add_group_metrics(
    record: dict[str, Any],
    correct: Sequence[bool],
    groups: Sequence[Any],
    seed: int = 0,
    weights: Mapping[str, float] | None = None,
    n_boot: int = 1000,
) -> None:
    """Put :func:`group_summary` into a result record's ``metrics`` and ``config.groups`` (and, with ``weights``,
    which average the gap is from in ``config.group_average``), and :func:`group_intervals` into its ``intervals``
    (nothing with fewer than two groups)."""
    metrics, per_group = group_summary(correct, groups, weights)
    if metrics:
        record["metrics"].update(metrics)
        record["config"]["groups"] = per_group
        record["config"]["group_average"] = "adj_acc_avg" if "adj_acc_avg" in metrics else "acc1"
        intervals = group_intervals(correct, groups, seed=seed, n_boot=n_boot, weights=weights)
        record.setdefault("intervals", {}).update(intervals)
