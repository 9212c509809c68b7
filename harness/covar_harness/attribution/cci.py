"""CCI (Cluster-based Concept Importance, docs/design.md section 7): leave one cluster out.

The removal pattern of cluster k drops its patches; s_k is the similarity to the target class text without them
and I_k = (s - s_k) / |s|. Every patch carries its cluster's importance. An empty cluster, or one holding every
patch (whose removal is undefined), has importance exactly 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores

if TYPE_CHECKING:
    import torch

EPS = 1e-8  # |s| floor: a similarity of exactly 0 would make the relative change undefined


class CCI(Attributor):
    name = "cci"
    description = (
        "Cluster-based Concept Importance: k-means on patch tokens, relative similarity drop when a "
        "cluster is removed (K+1 passes, K <= 64)"
    )

    def patterns(self, batch: ClusterBatch) -> torch.Tensor:
        return batch.patterns

    def scores(self, batch: ClusterBatch, without: torch.Tensor | None, ran: torch.Tensor | None) -> Scores:
        assert without is not None
        s, drop, importance = cci_from_embeddings(batch.emb, batch.text, without.to(batch.emb.device), batch.valid)
        return Scores(importance, drop, s)

    def leave_one_out(self, batch: ClusterBatch, without: torch.Tensor | None) -> torch.Tensor | None:
        return without  # the patterns are the leave-one-cluster-out ones


def cci_from_embeddings(emb, text, without, valid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, drop, importance) from the normalised embeddings without each cluster (B, K, D)."""
    s = (emb * text).sum(dim=-1)
    s_k = (without * text[:, None, :]).sum(dim=-1)
    return relative_importance(s, s_k, valid)


def relative_importance(s, s_k, valid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, drop = s - s_k, I = drop / |s|), zero for invalid clusters: CCI's definition, shared by every method
    that reads leave-one-out similarities s_k."""
    drop = (s[:, None] - s_k) * valid.to(s.device)
    return s, drop, drop / s.abs().clamp_min(EPS)[:, None]
