"""Zero-shot classification metrics, as fractions in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(labels: np.ndarray, topk: np.ndarray, n_classes: int) -> dict[str, float | None]:
    """acc1, acc5 (None with fewer than 5 classes) and mean per-class recall over the classes present.

    ``topk``: (N, k) class indices, best first. Mean per-class recall is the class-balanced accuracy that
    CounterAnimals reports; classes absent from ``labels`` do not count (a 45-class subset of a 1000-way task).
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return {"acc1": None, "acc5": None, "mean_per_class_recall": None}
    correct1 = topk[:, 0] == labels
    acc5 = None
    if n_classes >= 5 and topk.shape[1] >= 5:
        acc5 = float((topk[:, :5] == labels[:, None]).any(axis=1).mean())
    return {"acc1": float(correct1.mean()), "acc5": acc5, "mean_per_class_recall": per_class_recall(labels, correct1)}


def per_class_recall(labels: np.ndarray, correct: np.ndarray) -> float:
    classes = np.unique(labels)
    return float(np.mean([correct[labels == c].mean() for c in classes]))


def bootstrap_interval(
    values: np.ndarray,
    statistic=np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence[Any] | None = None,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over samples (rows of ``values``).

    ``clusters`` (one id per row, e.g. COVAR's ``source_id``): resample whole clusters, not rows, because the
    variants of one source object are not independent draws and a per-row bootstrap would be too narrow. With
    clusters the statistic is the mean (the pooled mean of the resampled clusters' rows).
    """
    values = np.asarray(values)
    if len(values) == 0:
        return None
    rng = np.random.default_rng(seed)
    if clusters is not None:
        stats = _cluster_means(values, clusters, rng, n_boot)
    else:
        idx = rng.integers(0, len(values), size=(n_boot, len(values)))
        if statistic is np.mean:  # vectorised fast path
            stats = values[idx].mean(axis=1)
        else:
            stats = np.array([statistic(values[i]) for i in idx])
    return percentile_interval(stats, level)


def percentile_interval(stats: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    lo, hi = np.percentile(stats, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def per_class_recall_interval(
    labels: np.ndarray,
    correct: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters: Sequence[Any] | None = None,
) -> tuple[float, float] | None:
    """Class-stratified bootstrap interval of :func:`per_class_recall`: each class's samples are resampled within
    that class (as many as it has), so every replicate has every class, as the statistic does. With ``clusters``
    (COVAR's ``source_id``) whole clusters are resampled within each class, as :func:`bootstrap_interval` does."""
    labels, correct = np.asarray(labels), np.asarray(correct, dtype=np.float64)
    if labels.size == 0:
        return None
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    recalls = np.empty((n_boot, len(classes)))
    for j, c in enumerate(classes):
        rows = np.flatnonzero(labels == c)
        if clusters is not None:
            recalls[:, j] = _cluster_means(correct[rows], [clusters[int(i)] for i in rows], rng, n_boot)
        else:
            recalls[:, j] = correct[rows][rng.integers(0, len(rows), size=(n_boot, len(rows)))].mean(axis=1)
    return percentile_interval(recalls.mean(axis=1), level)


def auroc_replicates(positive: Sequence[float], negative: Sequence[float], n_boot: int = 1000, seed: int = 0):
    """Bootstrap replicates of the AUROC P(positive > negative) + P(tie) / 2, each side resampled on its own (the
    two groups are separate samples, so every replicate has both). None when a side is empty."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return None
    wins = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (n_pos, n_neg)
    rng = np.random.default_rng(seed)
    pos_counts = _resample_counts(rng, pos.size, n_boot)
    neg_counts = _resample_counts(rng, neg.size, n_boot)
    return ((pos_counts @ wins) * neg_counts).sum(axis=1) / (pos.size * neg.size)


def poisson_binomial_upper(probs: Sequence[float] | np.ndarray, observed: int) -> float:
    """P(S >= observed) for S a sum of independent Bernoulli(p_i): the one-sided permutation p-value of a count
    against a null that gives each unit its own probability (the diagnosis null: error i is called background-
    driven with probability 1 - null_fg_i). Exact, by convolving the units one at a time (O(n^2), n = units
    with 0 < p < 1: about a second at 20 000); units with p 0 or 1 shift the count instead."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    need = int(observed) - int((p >= 1.0).sum())
    p = p[(p > 0.0) & (p < 1.0)]
    if need <= 0:
        return 1.0
    if need > p.size:
        return 0.0
    pmf = np.zeros(p.size + 1)
    pmf[0] = 1.0
    for j, q in enumerate(p):
        head = pmf[: j + 1].copy()
        pmf[: j + 1] *= 1.0 - q
        pmf[1 : j + 2] += head * q
    return float(min(1.0, max(0.0, pmf[need:].sum())))


def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n): how often each row is drawn in each resample with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(idx.ravel(), minlength=n * n_boot).reshape(n_boot, n).astype(np.float64)


def _cluster_means(values: np.ndarray, clusters: Sequence[Any], rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Means over rows of ``n_boot`` resamples of whole clusters (with replacement, as many as there are)."""
    if len(clusters) != len(values):
        raise ValueError(f"clusters: {len(clusters)} ids for {len(values)} values")
    _, inverse = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    sums = np.bincount(inverse, weights=values.astype(np.float64))
    counts = np.bincount(inverse).astype(np.float64)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    return sums[idx].sum(axis=1) / counts[idx].sum(axis=1)


def source_clusters(ids: Sequence[str | None]) -> list[str] | None:
    """Cluster ids for :func:`bootstrap_interval` when every sample carries a ``source_id`` (COVAR), else None
    (the plain bootstrap): a partial labelling would mix units."""
    if not ids or any(i is None for i in ids):
        return None
    return [str(i) for i in ids]


def average_interval(
    values: Sequence[float], intervals: Sequence[Sequence[float] | None], z: float = 1.96
) -> tuple[float, float] | None:
    """The normal interval of the mean of independent estimates, from their own intervals: se_i = half-width / z,
    se_mean = sqrt(sum se_i^2) / n. For when only per-part intervals are at hand (the leaderboard reads result
    files, not per-sample correctness); None unless every part has an interval."""
    if not values or len(intervals) != len(values) or any(i is None or len(i) != 2 for i in intervals):
        return None
    se = [(float(i[1]) - float(i[0])) / 2 / z for i in intervals if i is not None]
    mean = float(np.mean(values))
    half = z * float(np.sqrt(np.sum(np.square(se)))) / len(values)
    return mean - half, mean + half


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs (right for one model only) as Binomial(n, 1/2)."""

    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def paired_ratio_difference(
    num_a: np.ndarray,
    den_a: np.ndarray,
    num_b: np.ndarray,
    den_b: np.ndarray,
    clusters: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    clusters_b: Sequence[Any] | None = None,
) -> tuple[float | None, tuple[float, float] | None, float | None]:
    """sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b) over paired rows (one row = one sample seen by both models),
    with a paired bootstrap: each replicate resamples the rows (or whole ``clusters``, e.g. source objects) once
    and recomputes BOTH ratios on it, so what the models share stays shared. Returns (difference, percentile
    interval, two-sided bootstrap p: twice the smaller share of replicates on either side of 0); Nones when a
    ratio is undefined. Accuracy is num = correct, den = 1; BG-Er is num = background error, den = error.

    ``clusters_b``: the b rows are other samples than the a rows (another subset of the same source objects, e.g.
    COVAR Crop vs Scale), each naming its unit as ``clusters`` names the a rows'. A replicate draws from the union
    of units once, and a drawn unit brings its rows on both sides: pairing by source object, not by sample."""
    arrays = [np.asarray(x, dtype=np.float64) for x in (num_a, den_a, num_b, den_b)]
    if arrays[1].sum() <= 0 or arrays[3].sum() <= 0:
        return None, None, None
    diff = arrays[0].sum() / arrays[1].sum() - arrays[2].sum() / arrays[3].sum()
    ids_a = [str(c) for c in clusters] if clusters is not None else [str(i) for i in range(len(arrays[0]))]
    if clusters_b is not None and clusters is None:
        raise ValueError("clusters_b needs clusters: the a rows' units")
    ids_b = ids_a if clusters_b is None else [str(c) for c in clusters_b]
    if len(ids_b) != len(arrays[2]):
        raise ValueError(f"{len(ids_b)} unit ids for {len(arrays[2])} rows of b")
    _, inverse = np.unique(np.asarray(ids_a + ids_b), return_inverse=True)
    n_units = int(inverse.max()) + 1 if len(inverse) else 0
    parts = (inverse[: len(ids_a)], inverse[: len(ids_a)], inverse[len(ids_a) :], inverse[len(ids_a) :])
    sums = np.stack([np.bincount(ix, weights=x, minlength=n_units) for ix, x in zip(parts, arrays)])  # (4, units)
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_boot, 100):  # chunks keep the (replicates, units) count matrix small
        counts = _resample_counts(rng, sums.shape[1], min(100, n_boot - start))
        t = counts @ sums.T  # (replicates, 4)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append(t[:, 0] / t[:, 1] - t[:, 2] / t[:, 3])
    reps = np.concatenate(stats)
    reps = reps[np.isfinite(reps)]
    if not len(reps):
        return float(diff), None, None
    p = min(1.0, 2.0 * min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0))))
    return float(diff), percentile_interval(reps, level), p
