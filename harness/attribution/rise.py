"""``rise``: RISE (Petsiuk et al., 2018) with token removal instead of pixel masking.

``n_masks`` random masks per image keep each cell of ``cell`` x ``cell`` patches with probability ``p_keep``
(random offset of the cell grid per mask, as RISE's random shift); the dropped patches are removed from attention
(all masks of a batch in the engine's ONE removal call). A patch's importance is the mean similarity of the
masks that keep it minus the mean over all masks, relative to |s| (positive: keeping the patch raises the
explained class's similarity). A cluster's importance is the sum of its patches'; the per-patch map is kept
(``Scores.patch``). Masks that would remove every patch on a model without a prefix token do not count. Seeded
per image (the engine's per-sample seed), so an image gets the same masks whatever the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores
from covar_harness.attribution.cci import EPS

if TYPE_CHECKING:
    import torch


class RISE(Attributor):
    name = "rise"
    description = "baseline: RISE with token removal (random patch masks, 256 removal passes)"
    n_masks: ClassVar[int] = 256
    p_keep: ClassVar[float] = 0.5
    cell: ClassVar[int] = 2  # patches per mask cell side

    def patterns(self, batch: ClusterBatch) -> torch.Tensor:
        import torch

        from covar_harness.adapter import patch_grid

        rows, cols = patch_grid(batch.adapter)
        drops = [self._masks(int(seed), rows, cols) for seed in batch.seeds]
        return torch.stack(drops).to(batch.labels.device)  # (B, M, N) drop patterns

    def _masks(self, seed: int, rows: int, cols: int) -> torch.Tensor:
        """(M, N) drop patterns for one image: coarse keep cells, shifted by a random offset per mask."""
        import torch

        g = torch.Generator().manual_seed(seed + 2)
        c = self.cell
        cells = torch.rand(self.n_masks, rows // c + 2, cols // c + 2, generator=g) < self.p_keep
        keep = cells.repeat_interleave(c, dim=1).repeat_interleave(c, dim=2)
        dy, dx = torch.randint(0, c, (2, self.n_masks), generator=g)
        r = torch.arange(rows)[None, :, None] + dy[:, None, None]
        q = torch.arange(cols)[None, None, :] + dx[:, None, None]
        shifted = keep[torch.arange(self.n_masks)[:, None, None], r, q]  # (M, rows, cols)
        return ~shifted.reshape(self.n_masks, rows * cols)

    def scores(self, batch: ClusterBatch, without: torch.Tensor | None, ran: torch.Tensor | None) -> Scores:
        import torch

        assert without is not None and ran is not None
        s = batch.s
        sims = (without.to(s.device) * batch.text[:, None, :]).sum(dim=-1)  # (B, M)
        used = ran.to(s.device).float()
        keep = (~self.patterns(batch)).to(s.device).float() * used[..., None]  # (B, M, N)
        mean_all = (sims * used).sum(dim=1) / used.sum(dim=1).clamp_min(1.0)
        mean_kept = (sims[..., None] * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
        patch = (mean_kept - mean_all[:, None]) / s.abs().clamp_min(EPS)[:, None]
        clusters = torch.zeros(s.shape[0], batch.k, device=s.device, dtype=patch.dtype)
        clusters.scatter_add_(1, batch.labels.to(s.device), patch)
        return Scores(clusters * batch.valid.to(s.device), patch=patch)
