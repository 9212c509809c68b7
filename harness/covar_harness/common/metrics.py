"""Zero-shot classification metrics, as fractions in [0, 1]."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

EXACT_TOTAL = 2.0**52  # sums of whole numbers below this are exact in float64, whatever the order of the additions
FLOAT32_WHOLE = 2.0**24  # the same in float32
REPLICATE_ROWS = 64  # replicates per slice where a bootstrap gathers or counts its draws
COUNT_BLOCK = 1 << 16  # draws counted per bincount call (its bins stay in cache)
SHARED_DRAWS = 2  # Draws a shared_draws block keeps at once (600 MB each at 1000 replicates x 50,000 units)
DISTINCT_SHARE = 8  # resampled_sums draws per-row counts when at most 1 unit in 8 has a row of its own
BOOTSTRAP_VERSION = 2  # config.run_settings.bootstrap: 2 (issue 26) draws counts per distinct unit, not unit indices


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
    clusters the statistic is the mean (the pooled mean of the resampled clusters' rows). The replicates' sums
    come from :func:`resampled_sums` with a generator seeded ``seed``: how many units of each distinct value
    (each distinct (sum, size) pair of a cluster) a replicate draws, the same distribution as drawing the units.
    """
    values = np.asarray(values)
    if len(values) == 0:
        return None
    if clusters is not None:
        sums, counts = _cluster_totals(values, clusters)
        totals = resampled_sums(np.column_stack([sums, counts]), n_boot, seed)
        stats = totals[:, 0] / totals[:, 1]
    elif statistic is np.mean:
        stats = resampled_sums(values.astype(np.float64).reshape(len(values), 1), n_boot, seed)[:, 0] / len(values)
    else:
        idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
        stats = np.array([statistic(values[i]) for i in idx])
    return percentile_interval(stats, level)


def resampled_sums(columns: np.ndarray, n_boot: int, rng: np.random.Generator | int) -> np.ndarray:
    """(n_boot, k) float64: per bootstrap replicate, the column sums of ``columns`` (n units x k values each) over
    n units drawn uniformly with replacement. ``rng``: a generator, or the seed of a fresh one.

    Units with equal rows are interchangeable, so drawing n units and summing their rows has exactly the
    distribution of drawing how many units of each distinct row a replicate gets (multinomial, with the rows'
    frequencies as probabilities) and summing count x row: O(n_boot x distinct rows) random numbers instead of
    O(n_boot x n). A bootstrap over 0/1 flags (accuracy, BG-Er: 2 distinct rows, or a few (sum, size) pairs per
    source object) draws a few thousand numbers, not 50 million. Where most rows are distinct (continuous
    values) the units themselves are drawn (:class:`Draws`, shared within a :func:`shared_draws` block when
    ``rng`` is a seed). Sums of whole numbers are exact either way."""
    n = len(columns)
    rows, freq = _distinct_rows(columns)
    if len(rows) * DISTINCT_SHARE <= n:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        counts = gen.multinomial(n, freq / n, size=n_boot).astype(np.float64)  # (n_boot, distinct rows)
        return counts @ rows
    draws = Draws(rng, n, n_boot) if isinstance(rng, np.random.Generator) else _draws(rng, n, n_boot)
    return np.column_stack([draws.totals(columns[:, j]) for j in range(columns.shape[1])])


def _distinct_rows(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``columns`` (n, k) float64 and how many units hold each (one or two columns through
    a one-dimensional unique: a pair as one complex number sorts ten times faster than ``unique(axis=0)``)."""
    if columns.shape[1] == 1:
        rows, freq = np.unique(columns[:, 0], return_counts=True)
        return rows.reshape(-1, 1), freq
    if columns.shape[1] == 2:
        pairs, freq = np.unique(columns[:, 0] + 1j * columns[:, 1], return_counts=True)
        return np.column_stack([pairs.real, pairs.imag]), freq
    rows, freq = np.unique(columns, axis=0, return_counts=True)
    return rows, freq


class Draws:
    """One bootstrap's resamples: ``index[b]`` = the units drawn in replicate ``b``, as ``rng.integers(0, n,
    (n_boot, n))`` gives them. Sums over the drawn units are bit for bit those of ``x[index].sum(axis=1)``: whole
    numbers (0/1 flags, counts) add up exactly in any order, so they are summed as (replicates x units) draw
    counts times ``x``, one matrix product and no (n_boot, n) gather per statistic; other values are gathered
    and summed per replicate as before, a slice of replicates at a time."""

    def __init__(self, rng: np.random.Generator, n: int, n_boot: int):
        self.index = rng.integers(0, n, size=(n_boot, n))
        self.n = n
        self._counts: np.ndarray | None = None

    def counts(self) -> np.ndarray:
        """(n_boot, n) float32: how often each unit is drawn in each replicate (made once, on first use; a count
        is at most n, a whole number float32 holds exactly below 2**24)."""
        if self._counts is None:
            counts = np.empty(self.index.shape, dtype=np.float32 if self.n < FLOAT32_WHOLE else np.float64)
            rows = max(1, COUNT_BLOCK // max(1, self.n))  # replicates counted per bincount
            for a in range(0, len(self.index), rows):
                drawn = self.index[a : a + rows]
                flat = (drawn + self.n * np.arange(len(drawn))[:, None]).ravel()  # replicate r's units at r * n
                counts[a : a + rows] = np.bincount(flat, minlength=drawn.size).reshape(drawn.shape)
            self._counts = counts
        return self._counts

    def totals(self, x: np.ndarray) -> np.ndarray:
        """(n_boot,) float64: per replicate, the sum of ``x`` (float64, one value per unit) over the drawn units."""
        bound = _whole_bound(x) * self.n  # no partial sum of a replicate exceeds it
        if bound < FLOAT32_WHOLE and self.counts().dtype == np.float32:
            return (self.counts() @ x.astype(np.float32)).astype(np.float64)  # every partial sum exact
        out, rows = np.empty(len(self.index)), REPLICATE_ROWS
        for a in range(0, len(self.index), rows):
            drawn = self.index[a : a + rows]
            out[a : a + rows] = self.counts()[a : a + rows] @ x if bound < EXACT_TOTAL else x[drawn].sum(axis=1)
        return out

    def means(self, values: np.ndarray) -> np.ndarray:
        """(n_boot,): per replicate, ``values[index].mean(axis=1)`` (the rows drawn; ``values`` one per unit)."""
        whole = values.astype(np.float64) if values.dtype.kind in "biu" else values
        if whole.dtype == np.float64 and _whole_bound(whole) * self.n < EXACT_TOTAL:  # np.mean sums these exactly
            return self.totals(whole) / self.n
        rows = REPLICATE_ROWS
        return np.concatenate([values[self.index[a : a + rows]].mean(axis=1) for a in range(0, len(self.index), rows)])


def _whole_bound(x: np.ndarray) -> float:
    """The largest magnitude in ``x`` (float64) when every value is a whole number, else infinity."""
    return float(np.abs(x).max(initial=0.0)) if bool(np.all(np.floor(x) == x)) else float("inf")


_SHARED: ContextVar[dict[tuple, Any] | None] = ContextVar("shared_bootstrap_draws", default=None)


@contextmanager
def shared_draws() -> Iterator[None]:
    """Within the block, bootstrap intervals with the same seed, replicate count and number of units reuse one
    :class:`Draws` (the same generator gives the same draws, so nothing changes but the time: a diagnosis takes
    a dozen intervals over the same errors), and the cluster ids of a list are sorted once. Kept only for the
    block, the latest ``SHARED_DRAWS`` of them: a 50,000-unit bootstrap's draws are hundreds of MB."""
    token = _SHARED.set({} if _SHARED.get() is None else _SHARED.get())
    try:
        yield
    finally:
        _SHARED.reset(token)


def _draws(seed: int, n: int, n_boot: int) -> Draws:
    """The draws of a fresh generator seeded ``seed`` (shared within a :func:`shared_draws` block)."""
    shared = _SHARED.get()
    if shared is None:
        return Draws(np.random.default_rng(seed), n, n_boot)
    key = ("draws", seed, n, n_boot)
    if key not in shared:
        kept = [k for k in shared if k[0] == "draws"]
        for old in kept[: max(0, len(kept) - SHARED_DRAWS + 1)]:  # the oldest go: memory stays bounded
            del shared[old]
        shared[key] = Draws(np.random.default_rng(seed), n, n_boot)
    return shared[key]


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
            sums, counts = _cluster_totals(correct[rows], [clusters[int(i)] for i in rows])
            totals = resampled_sums(np.column_stack([sums, counts]), n_boot, rng)
            recalls[:, j] = totals[:, 0] / totals[:, 1]
        else:
            recalls[:, j] = resampled_sums(correct[rows].reshape(-1, 1), n_boot, rng)[:, 0] / len(rows)
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
    driven with probability 1 - null_fg_i). Exact, by convolving the units one at a time, each over the counts
    whose probability has not underflowed to 0.0 (O(n * width), n = units with 0 < p < 1: 0.4 s at 50,000);
    units with p 0 or 1 shift the count instead."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    need = int(observed) - int((p >= 1.0).sum())
    p = p[(p > 0.0) & (p < 1.0)]
    if need <= 0:
        return 1.0
    if need > p.size:
        return 0.0
    pmf, moved = np.zeros(p.size + 1), np.empty(p.size + 1)
    pmf[0] = 1.0
    lo = hi = 0  # pmf is 0.0 outside [lo, hi], and a 0.0 stays 0.0: the units update that window only
    for q in p.tolist():
        np.multiply(pmf[lo : hi + 1], q, out=moved[: hi + 1 - lo])
        pmf[lo : hi + 1] *= 1.0 - q
        pmf[lo + 1 : hi + 2] += moved[: hi + 1 - lo]
        hi += 1
        while lo < hi and pmf[lo] == 0.0:  # the tails underflow: a 50,000-unit window stays a few thousand wide
            lo += 1
        while hi > lo and pmf[hi] == 0.0:
            hi -= 1
    return float(min(1.0, max(0.0, pmf[need:].sum())))


def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n): how often each row is drawn in each resample with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n)) + n * np.arange(n_boot)[:, None]
    return np.bincount(idx.ravel(), minlength=n * n_boot).reshape(n_boot, n).astype(np.float64)


def _cluster_totals(values: np.ndarray, clusters: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster (sorted by id): the sum of its rows' values and its number of rows, both float64. A
    replicate's pooled mean is the sum of its drawn clusters' sums over the sum of their counts."""
    if len(clusters) != len(values):
        raise ValueError(f"clusters: {len(clusters)} ids for {len(values)} values")
    inverse = _cluster_ids(clusters)
    sums = np.bincount(inverse, weights=values.astype(np.float64))
    return sums, np.bincount(inverse).astype(np.float64)


def _cluster_ids(clusters: Sequence[Any]) -> np.ndarray:
    """Each row's cluster as its rank among the sorted distinct ids (made once per list in a shared block)."""
    ids = tuple(map(str, clusters))
    shared = _SHARED.get()
    if shared is not None and ("clusters", ids) in shared:
        return shared[("clusters", ids)]
    _, inverse = np.unique(np.asarray(ids), return_inverse=True)
    if shared is not None:
        shared[("clusters", ids)] = inverse
    return inverse


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
