"""Per-group accuracy, worst-group accuracy and the average-minus-worst gap (Waterbirds, Sagawa et al. 2020).

A task opts in by giving its samples a ``group`` meta (e.g. ``"waterbird on land"``). The evaluator adds
``worst_group_acc`` and ``group_acc_gap`` (average accuracy, i.e. acc1 over all evaluated samples, minus the
worst group's accuracy) to the metrics, and the per-group accuracies and counts to ``config.groups``: metric
names stay simple names, one per quantity, whatever the groups are called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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


def group_summary(correct: Sequence[bool], groups: Sequence[Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, per-group accuracies) for samples with groups: worst_group_acc and group_acc_gap; acc and n.

    Both empty when no sample names a group (the task has no groups). The average is plain accuracy over every
    evaluated sample (the Waterbirds test-set average as CLIP papers report it); when every sample names a group
    it is a weighted mean of the group accuracies, so the gap is never negative.
    """
    per_group = group_accuracies(correct, groups)
    if not per_group:
        return {}, {}
    average = sum(bool(ok) for ok in correct) / len(correct)
    worst = min(entry["acc"] for entry in per_group.values())
    return {"worst_group_acc": worst, "group_acc_gap": average - worst}, per_group


def group_intervals(
    correct: Sequence[bool], groups: Sequence[Any], seed: int = 0, n_boot: int = 1000, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of worst_group_acc and (when every sample names a group) group_acc_gap.

    Stratified: each group is resampled within itself, so every replicate keeps every group at its size (a
    plain resample could leave the worst group out). Empty when no sample names a group.
    """
    import numpy as np

    flags = np.asarray(correct, dtype=float)
    members: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        if group is not None and group != "":
            members.setdefault(str(group), []).append(i)
    if not members:
        return {}
    rng = np.random.default_rng(seed)
    draws = np.stack(
        [flags[ix][rng.integers(0, len(ix), size=(n_boot, len(ix)))].mean(axis=1) for _, ix in sorted(members.items())],
        axis=1,
    )  # (n_boot, n_groups) accuracies
    worst = draws.min(axis=1)
    tail = 50.0 * (1.0 - level)

    def span(values: Any) -> list[float]:
        return [float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))]

    out = {"worst_group_acc": span(worst)}
    sizes = np.array([len(ix) for _, ix in sorted(members.items())], dtype=float)
    if sizes.sum() == len(flags):  # the average is then a weighted mean of the groups: the gap is >= 0
        out["group_acc_gap"] = span(np.maximum(draws @ (sizes / sizes.sum()) - worst, 0.0))
    return out


def add_group_metrics(record: dict[str, Any], correct: Sequence[bool], groups: Sequence[Any], seed: int = 0) -> None:
    """Put :func:`group_summary` into a result record's ``metrics`` and ``config.groups``, and
    :func:`group_intervals` into its ``intervals`` (nothing when no sample names a group)."""
    metrics, per_group = group_summary(correct, groups)
    if metrics:
        record["metrics"].update(metrics)
        record["config"]["groups"] = per_group
        record.setdefault("intervals", {}).update(group_intervals(correct, groups, seed=seed))
