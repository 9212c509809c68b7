"""Localisation of an importance map against a foreground mask on the patch grid.

- Energy-based pointing game: the share of the positive attribution that falls inside the mask, each patch
  weighted by its foreground fraction (the diagnosis's fg_fraction, docs/design.md section 7.5).
- Relevance-rank accuracy (Quantus' ``RelevanceRankAccuracy``): with K the number of patches inside the mask
  (foreground fraction >= ``threshold``), the share of the K most important patches that lie inside it, ties
  broken in the curves' seeded random order.
"""

from __future__ import annotations

import numpy as np


def pointing_energy(importance: np.ndarray, fg: np.ndarray) -> float | None:
    """Positive attribution inside the mask / all positive attribution; None when nothing is positive."""
    pos = np.clip(np.asarray(importance, dtype=np.float64), 0.0, None)
    total = float(pos.sum())
    if total <= 0.0:
        return None
    return float((pos * np.clip(np.asarray(fg, dtype=np.float64), 0.0, 1.0)).sum() / total)


def relevance_rank_accuracy(
    importance: np.ndarray, fg: np.ndarray, threshold: float = 0.5, order: np.ndarray | None = None
) -> float | None:
    """Share of the top-K patches (K = patches inside the mask) that are inside it; None with an empty mask.
    ``order``: the patches most important first with ties already broken (the curves' order,
    ``patches.importance_order``); without it ties keep raster order."""
    inside = np.asarray(fg, dtype=np.float64) >= threshold
    k = int(inside.sum())
    if k == 0:
        return None
    if order is None:
        order = np.argsort(-np.asarray(importance, dtype=np.float64), kind="stable")
    return float(inside[np.asarray(order)[:k]].mean())
