"""Cluster Shapley values (``cci-shapley``, issue 9): exact Shapley values of CCI's K clusters for s.

All 2^K coalitions are patterns of the engine's one removal call (v(S) = cos(image with only the clusters in S
kept, text)); leave-one-out CCI importances are read off the same values, so the ``cci`` record stays exact.
v(all) = s. v(empty) (every patch removed) is a prefix-only forward when the adapter says
``can_remove_all_patches`` (CLS readout); otherwise it is DEFINED as 0 (cosine of "no evidence"), and the config
records which. Empty clusters are null players exactly (their coalitions are mapped onto the same value). K > 10
is refused: 2^K passes per image. The 2^K table is built for this method only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores
from covar_harness.attribution.cci import relative_importance
from covar_harness.attribution.records import ShapleyRecord, short
from covar_harness.attribution.removal import can_remove_all_patches
from covar_harness.attribution.settings import CCISettings, is_int
from covar_harness.catalog.registry import UsageError

if TYPE_CHECKING:
    import torch

MAX_SHAPLEY_K = 10  # 2^K removal passes per image: 1024 at K=10 is the most that stays practical
EXACT_EMPTY = "prefix-only forward (CLS readout)"
ZERO_EMPTY = "0 by convention (no prefix token)"


class CCIShapley(Attributor):
    name = "cci-shapley"
    description = (
        "exact Shapley values of CCI's K clusters (2^K coalition passes, K <= 10); also logs the "
        "leave-one-out CCI record"
    )
    k_range = (2, MAX_SHAPLEY_K)

    def patterns(self, batch: ClusterBatch) -> torch.Tensor:
        return coalition_patterns(batch.labels, batch.k)

    def scores(self, batch: ClusterBatch, without: torch.Tensor | None, ran: torch.Tensor | None) -> Scores:
        assert without is not None and ran is not None
        emb, s, k = batch.emb, batch.s, batch.k
        v_raw = (without.to(emb.device) * batch.text[:, None, :]).sum(dim=-1)
        shapley, v = shapley_game(v_raw, ran, s, batch.labels, k, can_remove_all_patches(batch.adapter))
        full = 2**k - 1
        s_k = v[:, [full ^ (1 << j) for j in range(k)]].to(s.dtype).to(emb.device)
        _, drop, importance = relative_importance(s, s_k, batch.valid)
        return Scores(importance, drop, shapley=shapley)

    def leave_one_out(self, batch: ClusterBatch, without: torch.Tensor | None) -> torch.Tensor | None:
        """The coalitions that keep every cluster but one (an empty cluster's coalition equals the full one)."""
        if without is None:
            return None
        full = 2**batch.k - 1
        return without[:, [full ^ (1 << j) for j in range(batch.k)]]

    def config(self, adapter: Any, settings: CCISettings) -> dict[str, Any]:
        return {
            "shapley": {
                "v_empty": EXACT_EMPTY if can_remove_all_patches(adapter) else ZERO_EMPTY,
                "coalitions": 2**settings.k,
            }
        }

    @classmethod
    def check_k(cls, k: Any) -> None:
        if is_int(k) and k > MAX_SHAPLEY_K:
            raise UsageError(
                f"cci-shapley evaluates all 2^K cluster coalitions: --cci-k {k} would need {2**k} "
                f"removal passes per image; use --cci-k <= {MAX_SHAPLEY_K}"
            )
        super().check_k(k)


@dataclass
class ShapleyValues:
    """Exact cluster Shapley values for s, with the two ends of the game (efficiency: sum = v_all - v_empty)."""

    values: torch.Tensor  # (B, K) float64
    v_all: torch.Tensor  # (B,) = s
    v_empty: torch.Tensor  # (B,) prefix-only forward, or 0 by convention (see ``v_empty_rule``)
    v_empty_rule: str

    @cached_property
    def _rows(self) -> tuple[list, list, list]:
        """The batch as Python lists, converted once (see ``Attribution._rows``)."""
        return self.values.tolist(), self.v_all.tolist(), self.v_empty.tolist()

    def record(self, b: int) -> ShapleyRecord:
        values, v_all, v_empty = self._rows
        return ShapleyRecord([short(v) for v in values[b]], short(float(v_all[b])), short(float(v_empty[b])))


def coalition_table(k: int) -> torch.Tensor:
    """(2^K, K) bool: row c keeps cluster j iff bit j of c is set (row 0 = empty coalition, last = all)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    c = torch.arange(2**k)
    return (c[:, None] >> torch.arange(k)[None, :]) & 1 == 1


def coalition_patterns(assignments: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N) cluster ids -> (B, 2^K, N) drop patterns: a patch is dropped when its cluster is not in S."""
    table = coalition_table(k).to(assignments.device)  # (2^K, K)
    kept = table[:, assignments]  # (2^K, B, N)
    return ~kept.permute(1, 0, 2)


def canonical_coalitions(assignments: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 2^K) index of each coalition with its empty clusters removed: coalitions that differ only by empty
    clusters remove the same patches, so they share ONE value and an empty cluster is an exact null player."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    present = torch.zeros(assignments.shape[0], k, dtype=torch.long)
    present.scatter_(1, assignments.cpu(), 1)
    bits = (present << torch.arange(k)[None, :]).sum(dim=1)  # (B,) bitmask of non-empty clusters
    return torch.arange(2**k)[None, :] & bits[:, None]


def shapley_from_values(v: torch.Tensor, k: int) -> torch.Tensor:
    """Exact Shapley values (B, K) from coalition values v (B, 2^K) indexed as in ``coalition_table``:
    phi_i = sum over S not containing i of |S|! (K-|S|-1)! / K! * (v(S + i) - v(S)). Computed in float64."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    v = v.double()
    c = torch.arange(2**k)
    size = coalition_table(k).sum(dim=1)
    weight = torch.tensor(
        [math.factorial(n) * math.factorial(k - n - 1) / math.factorial(k) if n < k else 0.0 for n in range(k + 1)],
        dtype=torch.float64,
    )
    phi = torch.zeros(v.shape[0], k, dtype=torch.float64)
    for i in range(k):
        without_i = c[(c >> i) & 1 == 0]
        phi[:, i] = ((v[:, without_i | (1 << i)] - v[:, without_i]) * weight[size[without_i]]).sum(dim=1)
    return phi


def shapley_game(
    v_raw: torch.Tensor, ran: torch.Tensor, s: torch.Tensor, assignments: torch.Tensor, k: int, exact_empty: bool
) -> tuple[ShapleyValues, torch.Tensor]:
    """Coalition values -> (ShapleyValues, v (B, 2^K) float64). v(all) = s; v(empty) = the prefix-only forward when
    it ran, else 0 by convention; coalitions are canonicalised (see ``canonical_coalitions``)."""
    v = v_raw.double().cpu().clone()
    v[:, -1] = s.double().cpu()
    v[:, 0] = v[:, 0].where(ran[:, 0].cpu(), v.new_zeros(()))
    v = v.gather(1, canonical_coalitions(assignments, k))
    rule = EXACT_EMPTY if exact_empty else ZERO_EMPTY
    return ShapleyValues(shapley_from_values(v, k), v[:, -1].clone(), v[:, 0].clone(), rule), v
