"""The random baselines: ``random`` (CCI's clusters, importances drawn uniformly in [0, 1) with the seed) and
``random-patch`` (every patch its own uniform draw).

Both remove nothing: the floor that any later comparison (faithfulness, fg/bg diagnosis) has to beat. The
counterfactual region test still rides the engine's one removal call. Why two: ``random``'s map is constant over
each cluster, so a deletion curve removes whole segments at once, and the ratio of a method to it depends on that
choice (the issue 23 audit: token deletion AUC 0.469 with cluster-constant random, 0.603 with a per-patch random
order on the clean demo model). ``random-patch`` is the standard per-patch uniform order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores

if TYPE_CHECKING:
    import torch


class RandomBaseline(Attributor):
    name = "random"
    description = "baseline: CCI's clusters with random importances (seeded)"

    def scores(self, batch: ClusterBatch, without: torch.Tensor | None, ran: torch.Tensor | None) -> Scores:
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        draws = torch.stack(
            [torch.rand(batch.k, generator=torch.Generator().manual_seed(int(seed) + 1)) for seed in batch.seeds]
        )
        return Scores(draws * batch.valid.cpu())


class RandomPatch(Attributor):
    name = "random-patch"
    description = "baseline: every patch's importance drawn uniformly (seeded), not constant over clusters"

    def scores(self, batch: ClusterBatch, without: torch.Tensor | None, ran: torch.Tensor | None) -> Scores:
        """Per-patch draws (the map faithfulness reads); per cluster, their mean (what diagnosis reads: still
        uninformative, and comparable across cluster sizes)."""
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        B, N = batch.labels.shape
        patch = torch.stack(
            [torch.rand(N, generator=torch.Generator().manual_seed(int(seed) + 2)) for seed in batch.seeds]
        ).to(batch.labels.device)
        sums = torch.zeros(B, batch.k, device=patch.device).scatter_add_(1, batch.labels, patch)
        counts = torch.zeros(B, batch.k, device=patch.device).scatter_add_(1, batch.labels, torch.ones_like(patch))
        clusters = sums / counts.clamp_min(1.0)
        return Scores(clusters * batch.valid.to(patch.device), patch=patch)
