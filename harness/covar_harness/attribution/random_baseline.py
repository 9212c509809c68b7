"""The ``random`` baseline: CCI's clusters, importances drawn uniformly in [0, 1) with the seed.

It shares everything up to the clusters and removes nothing: the floor that any later comparison (faithfulness,
fg/bg diagnosis) has to beat. The counterfactual region test still rides the engine's one removal call.
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
        import torch

        draws = torch.stack(
            [torch.rand(batch.k, generator=torch.Generator().manual_seed(int(seed) + 1)) for seed in batch.seeds]
        )
        return Scores(draws * batch.valid.cpu())
