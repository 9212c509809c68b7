"""What a pair's named regions say (docs/design.md section 11): which concepts drive its background errors, how
often, against which null, and per predicted class.

Everything here reads :class:`ConceptRecord`-like objects through four attributes (``pred``, ``bg_error``,
``driving`` and ``top``, plus ``unit`` for the bootstrap) and works with numpy; nothing imports torch.

Two nulls, for two questions:

- **Is the driving region special?** (``null_share`` per concept): the same errors with the concept labels
  permuted across each error's clusters, i.e. the driving cluster replaced by one of the error's removed clusters
  drawn uniformly. Its expectation is the share of the errors' clusters named c; the one-sided p-value comes from
  ``DRAWS`` such draws. A concept that names the background everywhere in these images gets a high null too.
- **Does the concept follow the predicted class?** (``class_association``): the agreement (share of named errors
  whose concept is the most frequent one of their predicted class) against the same errors with the concepts
  permuted across errors, predictions fixed. :func:`expected_agreement` does the same for a known mapping from
  classes to concepts (the demo's known truth: the background planted for each class).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from covar_harness.common.metrics import bootstrap_interval

DRAWS = 1000  # permutation draws per null
TOP_ROWS = 10  # concepts listed per pair


def _short(value: float) -> float:
    return float(f"{value:.7g}")


def _interval(values: np.ndarray, units: list[str] | None, seed: int) -> list[float] | None:
    interval = bootstrap_interval(values, seed=seed, clusters=units)
    return None if interval is None else [_short(interval[0]), _short(interval[1])]


def _p_value(null_counts: np.ndarray, observed: float) -> float:
    """One-sided permutation p-value with the observed value counted as a draw (never 0)."""
    return _short((1 + int((null_counts >= observed).sum())) / (1 + len(null_counts)))


def named_errors(records: Sequence[Any]) -> list[Any]:
    """The background-driven errors whose driving background cluster has a name."""
    return [r for r in records if r.bg_error and r.concept(r.driving) is not None]


def cluster_null(records: Sequence[Any], vocab: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(expected share per concept, (DRAWS, C) counts per draw) when each error's named cluster is one of its removed
    clusters drawn uniformly (the concept labels permuted across the error's clusters)."""
    index = {c: i for i, c in enumerate(vocab)}
    per_error = [[index[pairs[0][0]] for pairs in r.top if pairs] for r in records]
    width = max(len(ids) for ids in per_error)
    ids = np.array([row + [row[0]] * (width - len(row)) for row in per_error])
    lengths = np.array([len(row) for row in per_error])
    expected = np.zeros(len(vocab))
    for row in per_error:
        np.add.at(expected, row, 1.0 / len(row))
    rng = np.random.default_rng([seed, 27])
    picks = (rng.random((DRAWS, len(records))) * lengths).astype(np.int64)
    drawn = ids[np.arange(len(records))[None, :], picks]  # (DRAWS, n) concept ids
    counts = np.zeros((DRAWS, len(vocab)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(DRAWS), len(records)), drawn.reshape(-1)), 1)
    return expected / len(records), counts


def concept_table(records: Sequence[Any], vocab: list[str], seed: int) -> list[dict[str, Any]]:
    """The concepts most often naming the driving background cluster: count, share with its bootstrap interval
    (unit: the source object where every error has one), the cluster-permutation null and its p-value."""
    named = [r.concept(r.driving) for r in records]
    counts = Counter(named)
    units = [r.unit for r in records]
    clusters = units if all(u is not None for u in units) else None
    expected, null_counts = cluster_null(records, vocab, seed)
    rows = []
    for concept, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ROWS]:
        i = vocab.index(concept)
        hits = np.array([c == concept for c in named], dtype=np.float64)
        rows.append(
            {
                "concept": concept,
                "count": count,
                "share": _short(count / len(records)),
                "interval": _interval(hits, clusters, seed),
                "null_share": _short(float(expected[i])),
                "p_value": _p_value(null_counts[:, i], count),
            }
        )
    return rows


def by_predicted_class(records: Sequence[Any], classnames: list[str]) -> list[dict[str, Any]]:
    """Per predicted class (most errors first): its named background errors, their most frequent concept and its
    share ("predicted X because of Y")."""
    groups: dict[int, list[str]] = {}
    for r in records:
        groups.setdefault(int(r.pred), []).append(str(r.concept(r.driving)))
    rows = []
    for pred, concepts in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        concept, count = sorted(Counter(concepts).items(), key=lambda kv: (-kv[1], kv[0]))[0]
        name = classnames[pred] if 0 <= pred < len(classnames) else str(pred)
        rows.append(
            {
                "class": name,
                "n": len(concepts),
                "concept": concept,
                "count": count,
                "share": _short(count / len(concepts)),
            }
        )
    return rows


def _modal_agreement(pred: np.ndarray, concept: np.ndarray, n_concepts: int) -> np.ndarray:
    """(draws,) share of errors whose concept is the most frequent of their predicted class, for (draws, n)
    concept ids (rows: permutations) and the fixed predictions ``pred`` (n,)."""
    classes, pred_ids = np.unique(pred, return_inverse=True)
    draws, n = concept.shape
    cells = (np.arange(draws)[:, None] * len(classes) + pred_ids[None, :]) * n_concepts + concept
    table = np.bincount(cells.reshape(-1), minlength=draws * len(classes) * n_concepts)
    return table.reshape(draws, len(classes), n_concepts).max(axis=2).sum(axis=1) / n


def class_association(records: Sequence[Any], vocab: list[str], seed: int) -> dict[str, Any]:
    """Whether the named concept follows the predicted class: the modal agreement and its null with the concepts
    permuted across errors (predictions fixed): mean, 95th percentile and one-sided p-value."""
    index = {c: i for i, c in enumerate(vocab)}
    pred = np.array([int(r.pred) for r in records])
    concept = np.array([index[str(r.concept(r.driving))] for r in records])
    observed = float(_modal_agreement(pred, concept[None, :], len(vocab))[0])
    rng = np.random.default_rng([seed, 28])
    shuffled = np.stack([rng.permutation(concept) for _ in range(DRAWS)])
    null = _modal_agreement(pred, shuffled, len(vocab))
    return {
        "agreement": _short(observed),
        "null_mean": _short(float(null.mean())),
        "null_95": _short(float(np.quantile(null, 0.95))),
        "p_value": _p_value(null, observed - 1e-12),
        "draws": DRAWS,
    }


def expected_agreement(
    concepts: Sequence[str], preds: Sequence[int], expected: dict[int, str], seed: int = 0
) -> dict[str, Any]:
    """The share of errors whose concept is ``expected[pred]`` (a known mapping, e.g. the background planted for
    each class) and its null with the concepts permuted across errors: exact mean, and one-sided p-value."""
    if not len(preds):
        return {"share": None, "null_mean": None, "p_value": None, "n": 0}
    target = np.array([expected.get(int(p)) for p in preds], dtype=object)
    concepts_arr = np.array(list(concepts), dtype=object)
    observed = float(np.mean(concepts_arr == target))
    freq = Counter(concepts)
    null_mean = float(np.mean([freq.get(t, 0) / len(concepts) for t in target]))
    rng = np.random.default_rng([seed, 29])
    null = np.array([np.mean(rng.permutation(concepts_arr) == target) for _ in range(DRAWS)])
    return {
        "share": _short(observed),
        "null_mean": _short(null_mean),
        "p_value": _p_value(null, observed - 1e-12),
        "n": len(target),
    }


def summarise(records: Sequence[Any], vocab: list[str], classnames: list[str], seed: int = 0) -> dict[str, Any]:
    """``config.concepts`` of a pair: counts, the concept table, per predicted class, and the class association."""
    bg = [r for r in records if r.bg_error]
    named = named_errors(records)
    out: dict[str, Any] = {
        "n_named": len(records),
        "n_bg_errors": len(bg),
        "n_bg_errors_named": len(named),
        "background_errors": [],
        "by_predicted_class": [],
        "class_association": None,
    }
    if named:
        out["background_errors"] = concept_table(named, vocab, seed)
        out["by_predicted_class"] = by_predicted_class(named, classnames)
        out["class_association"] = class_association(named, vocab, seed)
    return out
