"""The diagnosis as array operations (docs/design.md section 8): every sample of a batch, and every draw of the
null, scored in one numpy call per rule instead of one Python call per sample and draw.

A driver rule that reads per-cluster values (each patch carries its cluster's value) is a :data:`PatchScore`: a
function of the (..., N) patch values and the (..., N) foreground fraction per patch that returns the (...)
scores and whether each was decided. :func:`blocks` groups a batch's samples into rectangular arrays,
:func:`value_table` and :func:`patch_index` turn per-cluster values into patch values with one gather, and
:func:`null_order` (one sample; :func:`null_orders` for a batch), :func:`null_columns` and :func:`null_counts`
give the null's draws.

The null's draws stay those of one ``rng.permutation`` per draw from a generator seeded per sample:
``Generator.permuted`` over a tiled range shuffles each row with the same calls on the same stream, so a sample's
draws (and its null) do not depend on the batch it sits in, and match what the per-draw loop gave. The sums are
reductions over the last, contiguous axis, which numpy computes per row exactly as for a one-dimensional array,
so a batched score is bit-for-bit the one-sample score.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import numpy as np

PatchScore = Callable[["np.ndarray", "np.ndarray"], "tuple[np.ndarray, np.ndarray]"]
NULL_BLOCK = 1 << 22  # elements of one (samples, draws, patches) array of the null; larger batches go in slices


@dataclass
class Block:
    """Samples that share the shape and dtype of their foreground grid and the length of their cluster ids."""

    rows: list[int]  # positions in the caller's sequence
    fg: np.ndarray  # (M, N) foreground fraction per patch, in the dtype the samples gave it
    assignments: np.ndarray  # (M, N) int64 cluster id per patch


def blocks(items: Sequence[tuple[int, Any, Sequence[int] | np.ndarray]]) -> list[Block]:
    """``(row, fg, assignments)`` per sample as rectangular blocks. Samples are grouped, not converted: a
    float32 grid is summed in float32 as it would be on its own."""

    groups: dict[tuple[Any, ...], list[tuple[int, Any, Sequence[int] | np.ndarray]]] = {}
    for row, fg, assignments in items:
        grid = np.asarray(fg)
        groups.setdefault((grid.dtype.str, grid.shape, len(assignments)), []).append((row, grid, assignments))
    return [
        Block(
            [row for row, _, _ in members],
            np.stack([grid for _, grid, _ in members]),
            np.asarray([assignments for _, _, assignments in members], dtype=np.int64),
        )
        for members in groups.values()
    ]


class BlockSet:
    """A batch's samples grouped into :func:`blocks` once; :meth:`take` gives the blocks of any subset of them
    (a rule's scored samples, its null's decided ones) by indexing those arrays, not by converting every grid and
    cluster list again for each rule, target and null. A sample's row is the same either way."""

    def __init__(self, items: Sequence[tuple[int, Any, Sequence[int] | np.ndarray]]):
        self.blocks = blocks(items)
        self.where = {row: (b, k) for b, block in enumerate(self.blocks) for k, row in enumerate(block.rows)}

    def take(self, rows: Sequence[int]) -> list[Block]:
        """The blocks of ``rows`` (each in ``where``), grouped as :func:`blocks` groups them, in their order."""
        picked: dict[int, tuple[list[int], list[int]]] = {}
        for row in rows:
            b, k = self.where[row]
            members, positions = picked.setdefault(b, ([], []))
            members.append(row)
            positions.append(k)
        out = []
        for b, (members, positions) in picked.items():
            block = self.blocks[b]
            if members == block.rows:
                out.append(block)
            else:
                at = np.asarray(positions, dtype=np.int64)
                out.append(Block(members, block.fg[at], block.assignments[at]))
        return out


def grid_means(grids: dict[int, Any]) -> dict[int, float]:
    """{key: the grid's mean} (the object's area), each as ``float(grid.mean())`` gives it: the grids of one
    shape and dtype are stacked and averaged per row, which numpy sums like each row on its own."""
    out: dict[int, float] = {}
    for block in blocks([(key, grid, ()) for key, grid in grids.items()]):
        out.update(zip(block.rows, block.fg.reshape(len(block.rows), -1).mean(axis=1).tolist()))
    return out


def value_table(values: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """(M, L + 1) float64 per-cluster values, zero-padded to the longest, with a last column of zeros (where a
    patch whose cluster has no value reads its 0); and the (M,) number of values of each sample."""

    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    width = int(lengths.max(initial=0)) + 1
    table = np.zeros((len(values), width), dtype=np.float64)
    if len(values) and (lengths == width - 1).all():
        table[:, :-1] = np.asarray(values, dtype=np.float64)
    else:
        for r, v in enumerate(values):
            table[r, : len(v)] = np.asarray(v, dtype=np.float64)
    return table, lengths


def patch_index(assignments: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """(M, N) column of the value table each patch reads: its cluster's, or the zero column (``width - 1``) for
    a cluster id with no value (outside 0..len(values) - 1)."""

    has_value = (assignments >= 0) & (assignments < lengths[:, None])
    return np.where(has_value, assignments, width - 1)


def patch_values(assignments: Sequence[int], values: Sequence[float]) -> np.ndarray:
    """(N,) per-patch values of one sample from its per-cluster values (a cluster id with no value counts 0)."""

    table, lengths = value_table([values])
    index = patch_index(np.asarray([assignments], dtype=np.int64), lengths, table.shape[1])
    return np.take_along_axis(table, index, axis=1)[0]


def null_order(seed: int, n: int, draws: int) -> np.ndarray:
    """(draws, n) int: one permutation of ``n`` non-empty clusters per draw of a sample's null, from a generator
    seeded with ``seed``: the same rows that ``draws`` successive ``rng.permutation(n)`` calls give."""

    return np.random.Generator(np.random.PCG64(seed)).permuted(_ranges(n, draws), axis=1)


def null_orders(seeds: Sequence[int], sizes: Sequence[int], draws: int) -> list[np.ndarray]:
    """:func:`null_order` of each (seed, n), the very same arrays, for a batch: one generator whose PCG64 state is
    set to the state ``PCG64(seed)`` starts from (:func:`pcg64_states`, all seeds at once) instead of a generator
    built per sample, whose seeding (a ``SeedSequence`` and numpy's error-state guard) cost 4x the draws."""
    gen = np.random.Generator(np.random.PCG64(0))
    bits = gen.bit_generator
    out = []
    for (state, inc), n in zip(pcg64_states(seeds), sizes):
        bits.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc}, "has_uint32": 0, "uinteger": 0}
        out.append(gen.permuted(_ranges(n, draws), axis=1))
    return out


_MASK128 = (1 << 128) - 1
_PCG_MULT = (2549297995355413924 << 64) + 4865540595714422341  # PCG64's 128-bit multiplier


def pcg64_states(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """(state, inc) of ``PCG64(seed)`` for each seed in 0..2**63 - 1 (``tests/diagnosis/test_null_orders.py``
    checks them against numpy): numpy's ``SeedSequence(seed).generate_state(4, uint64)`` done for all seeds at once
    in uint32 arithmetic (entropy: the seed's two 32-bit words, the pool padded with zeros, as numpy pads it), then
    PCG64's seeding (``pcg_setseq_128_srandom_r``) in Python integers."""
    s = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    u = np.uint32
    const = [u(0x43B0D7E5)]

    def hashmix(value: np.ndarray) -> np.ndarray:
        value = value ^ const[0]
        const[0] = u(const[0] * u(0x931E8875))
        value = value * const[0]
        return value ^ (value >> u(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = u(0xCA01F9DD) * x - u(0x4973F715) * y
        return out ^ (out >> u(16))

    zero = np.zeros(len(s), dtype=u)
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as numpy's does
        pool = [hashmix(e) for e in ((s & np.uint64(0xFFFFFFFF)).astype(u), (s >> np.uint64(32)).astype(u), zero, zero)]
        for a in range(4):
            for b in range(4):
                if a != b:
                    pool[b] = mix(pool[b], hashmix(pool[a]))
        words, const_b = [], u(0x8B51F9DD)
        for k in range(8):
            value = pool[k % 4] ^ const_b
            const_b = u(const_b * u(0x58F38DED))
            value = value * const_b
            words.append((value ^ (value >> u(16))).astype(np.uint64))
    out = []
    for w in zip(*[(words[2 * k] | (words[2 * k + 1] << np.uint64(32))).tolist() for k in range(4)]):
        initstate, inc = (w[0] << 64) | w[1], (((w[2] << 64) | w[3]) << 1 | 1) & _MASK128
        out.append((((inc + initstate) * _PCG_MULT + inc) & _MASK128, inc))
    return out


@functools.lru_cache(maxsize=64)
def _ranges(n: int, draws: int) -> np.ndarray:
    """(draws, n) read-only rows of ``arange(n)``: made once per shape, not once per sample (``permuted`` copies
    it; ``default_rng(seed)`` is ``Generator(PCG64(seed))``, the same draws, without its argument checks)."""
    out = np.tile(np.arange(n), (draws, 1))
    out.flags.writeable = False
    return out


def present_clusters(index: np.ndarray, width: int) -> np.ndarray:
    """(M, width) bool: the clusters with a value that hold at least one patch (``index`` from
    :func:`patch_index`); the null permutes the values of these only."""

    present = np.zeros((index.shape[0], width), dtype=bool)
    present[np.arange(index.shape[0])[:, None], index] = True
    present[:, width - 1] = False  # the zero column: patches whose cluster has no value
    return present


def null_columns(present: np.ndarray, orders: Sequence[np.ndarray]) -> np.ndarray:
    """(M, D, width) int: per sample and draw of the null, the value-table column each cluster takes its value
    from: the non-empty clusters' values permuted among them by ``orders[r]`` (:func:`null_order`), every other
    column its own."""

    rows, width = present.shape
    draws = orders[0].shape[0] if len(orders) else 0
    columns = np.broadcast_to(np.arange(width), (rows, draws, width)).copy()
    sizes = present.sum(axis=1)
    for n in np.unique(sizes).tolist():  # the samples with n non-empty clusters, all at once
        same = np.flatnonzero(sizes == n)
        clusters = np.nonzero(present[same])[1].reshape(len(same), 1, n)  # each row's, ascending
        order = np.stack([orders[r] for r in same.tolist()])  # (m, draws, n)
        taken = np.take_along_axis(np.broadcast_to(clusters, order.shape), order, axis=2)
        columns[same[:, None, None], np.arange(draws)[None, :, None], clusters] = taken
    return columns


def null_counts(
    scores: Sequence[tuple[PatchScore, float]],
    table: np.ndarray,
    index: np.ndarray,
    fg: np.ndarray,
    columns: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per ``(score, threshold)`` of ``scores``, per sample, over its null's draws: how many call fg (score >=
    threshold) and how many are decided. ``table`` (M, W) values, ``index`` (M, N) the column of each patch,
    ``fg`` (M, N), ``columns`` (M, D, W) from :func:`null_columns`. All draws of all samples go through each score
    at once, in slices of at most ``NULL_BLOCK`` elements; the rules reading the same values (paper and area both
    read ``importance``) score one gather of the permuted patch values, made once, not once per rule."""

    rows, draws = columns.shape[:2]
    n = index.shape[1]
    step = max(1, NULL_BLOCK // max(1, draws * n))
    calls: list[list[np.ndarray]] = [[] for _ in scores]
    decided: list[list[np.ndarray]] = [[] for _ in scores]
    for a in range(0, rows, step):
        b = min(rows, a + step)
        drawn = np.take_along_axis(table[a:b, None, :], columns[a:b], axis=2)  # (m, D, W) permuted values
        # each (sample, draw)'s patches read their columns of ``drawn``: one flat gather (the same elements as
        # take_along_axis over a broadcast index, at half the time)
        at = (np.arange((b - a) * draws) * drawn.shape[2]).reshape(b - a, draws, 1) + index[a:b, None, :]
        values = np.take(drawn, at)
        for k, (score, threshold) in enumerate(scores):
            got, ok = score(values, fg[a:b, None, :])
            with np.errstate(invalid="ignore"):
                calls[k].append(((got >= threshold) & ok).sum(axis=1))
            decided[k].append(ok.sum(axis=1))
    if not rows:
        empty = np.zeros(0, dtype=np.int64)
        return [(empty, empty) for _ in scores]
    return [(np.concatenate(c), np.concatenate(d)) for c, d in zip(calls, decided)]


# ---- the scores of the built-in rules -----------------------------------------------------------------------------
def fg_fractions(patch_values: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive mass inside the foreground / total positive mass, over the last axis; undecided where nothing
    is positive."""

    pos = np.clip(patch_values, 0.0, None)
    total = pos.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (pos * fg).sum(axis=-1) / total
    return share, ~(total <= 0)


def density_ratios(patch_values: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of positive *density* that is foreground, d_fg / (d_fg + d_bg), over the last axis; undecided
    where nothing is positive or either region is empty."""

    pos = np.clip(patch_values, 0.0, None)
    area_fg, area_bg = fg.sum(axis=-1), (1 - fg).sum(axis=-1)
    decided = ~((pos.sum(axis=-1) <= 0) | (area_fg <= 0) | (area_bg <= 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        d_fg, d_bg = (pos * fg).sum(axis=-1) / area_fg, (pos * (1 - fg)).sum(axis=-1) / area_bg
        ratio = d_fg / (d_fg + d_bg)
    return ratio, decided
