"""Batched k-means in torch: every image of a batch clustered at once, on the model's device.

k-means++ seeding from per-image uniforms (deterministic and device-independent), Lloyd iterations to sklearn's
strict convergence, empty clusters reseeded with sklearn's rule, restarts side by side (lowest inertia kept).
torch is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from covar_harness.attribution.settings import DEFAULTS

if TYPE_CHECKING:
    import torch

KMEANS_BUDGET_BYTES = 1 << 30  # above this the restarts' (B * n_init, N, C) copy is split over the images


@dataclass
class KMeansResult:
    labels: torch.Tensor  # (B, N) long, cluster id per point
    centres: torch.Tensor  # (B, K, C)
    inertia: torch.Tensor  # (B,) sum of squared distances to the assigned centre
    n_iter: int  # Lloyd iterations run (the batch's slowest row)


def _sq_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(R, N, C), (R, K, C) -> (R, N, K) squared Euclidean distances, via the Gram expansion (no R*N*K*C buffer)."""
    d = (x * x).sum(-1, keepdim=True) - 2 * x @ centres.transpose(1, 2) + (centres * centres).sum(-1)[:, None, :]
    return d.clamp_min_(0)


def kmeans_plusplus(x: torch.Tensor, k: int, uniforms: torch.Tensor) -> torch.Tensor:
    """k-means++ seeding for every row at once. ``uniforms`` (R, k) in [0, 1) make it deterministic and
    device-independent: centre j is drawn by inverse CDF over the current squared distances. When every
    distance is 0 (fewer distinct points than k) the draw is uniform; duplicates then give empty clusters."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    R, N, _ = x.shape
    rows = torch.arange(R, device=x.device)
    u = uniforms.to(x.device, x.dtype)
    x2 = (x * x).sum(-1)

    def sq_dist_to(centre: torch.Tensor) -> torch.Tensor:  # (R, C) -> (R, N), no (R, N, C) buffer
        return (x2 - 2 * (x @ centre[:, :, None]).squeeze(-1) + (centre * centre).sum(-1, keepdim=True)).clamp_(min=0)

    first = (u[:, 0] * N).long().clamp_(max=N - 1)
    centres = [x[rows, first]]
    closest = sq_dist_to(centres[0])  # (R, N)
    for j in range(1, k):
        total = closest.sum(-1, keepdim=True)
        weights = torch.where(total > 0, closest, torch.ones_like(closest))
        cdf = weights.cumsum(-1)
        idx = torch.searchsorted(cdf, (u[:, j : j + 1] * cdf[:, -1:]).contiguous(), right=True).squeeze(-1)
        centre = x[rows, idx.clamp_(max=N - 1)]
        centres.append(centre)
        closest = torch.minimum(closest, sq_dist_to(centre))
    return torch.stack(centres, dim=1)


def _reseed_empty(x: torch.Tensor, dist: torch.Tensor, empty: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Move each empty cluster's centre onto a point far from its own centre (the j-th empty cluster of a row
    gets the j-th farthest point; sklearn's rule). A cluster whose candidate is at distance 0 stays empty:
    there is nothing left to split. Edits ``centres`` in place; returns (R,) whether a row was reseeded."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    R, N, _ = x.shape
    top = min(centres.shape[1], N)
    far_d, far_i = dist.topk(top, dim=1)
    rank = (empty.long().cumsum(dim=1) - 1).clamp_(0, top - 1)
    cand_i, cand_d = far_i.gather(1, rank), far_d.gather(1, rank)
    reseed = empty & (cand_d > 0) & (empty.long().cumsum(dim=1) <= top)
    if bool(reseed.any()):
        r, kk = torch.nonzero(reseed, as_tuple=True)
        centres[r, kk] = x[r, cand_i[r, kk]]
    return reseed.any(dim=1)


def lloyd(x: torch.Tensor, centres: torch.Tensor, max_iter: int) -> KMeansResult:
    """Lloyd iterations on every row until no row's assignment changes (sklearn's strict convergence,
    i.e. ``tol=0``). Converged rows sit at a fixed point, so iterating them along with the others is harmless."""
    import torch.nn.functional as F  # lazy: ls / --help / plugin discovery import this module without torch

    centres = centres.clone()
    k = centres.shape[1]
    prev = None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (the count is returned after the loop)
        dist, labels = _sq_distances(x, centres).min(dim=-1)
        onehot = F.one_hot(labels, k).to(x.dtype)  # (R, N, K)
        counts = onehot.sum(dim=1)  # (R, K)
        new = (onehot.transpose(1, 2) @ x) / counts.clamp_min(1)[..., None]
        empty = counts == 0
        new[empty] = centres[empty]
        reseeded = _reseed_empty(x, dist, empty, new)
        settled = ~reseeded if prev is None else (labels == prev).all(dim=1) & ~reseeded
        centres = new
        if prev is not None and bool(settled.all()):
            break
        prev = labels
    dist, labels = _sq_distances(x, centres).min(dim=-1)
    return KMeansResult(labels, centres, dist.sum(dim=-1), n_iter)


def batched_kmeans(
    x: torch.Tensor,
    k: int,
    seeds: Sequence[int],
    n_init: int = DEFAULTS.kmeans_n_init,
    max_iter: int = DEFAULTS.kmeans_iters,
    init: torch.Tensor | None = None,
) -> KMeansResult:
    """k-means of each row of ``x`` (B, N, C) into ``k`` clusters, all rows at once on ``x``'s device.

    ``seeds`` (one per row) drive k-means++ seeding, ``n_init`` restarts per row, lowest inertia kept (defaults:
    ``CCISettings``).
    ``init`` (B, K, C) gives the initial centres instead (one run; used to compare with scikit-learn).
    Points are centred per row first (as scikit-learn does) so the Gram-expansion distances keep precision.
    When the restarts' copy of ``x`` would exceed ``KMEANS_BUDGET_BYTES``, the images are clustered in groups
    (every row is independent, so only memory changes).
    """
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    B, N, C = x.shape
    if len(seeds) != B and init is None:
        raise ValueError(f"need one seed per row: {len(seeds)} seeds for {B} rows")
    per_group = max(1, KMEANS_BUDGET_BYTES // max(1, n_init * N * C * x.element_size()))
    if init is None and per_group < B:
        parts = [
            batched_kmeans(x[i : i + per_group], k, seeds[i : i + per_group], n_init, max_iter)
            for i in range(0, B, per_group)
        ]
        return KMeansResult(
            torch.cat([r.labels for r in parts]),
            torch.cat([r.centres for r in parts]),
            torch.cat([r.inertia for r in parts]),
            max(r.n_iter for r in parts),
        )
    offset = x.mean(dim=1, keepdim=True)
    xc = x - offset
    if init is not None:
        res = lloyd(xc, init.to(x.device, x.dtype) - offset, max_iter)
        res.centres = res.centres + offset
        return res
    uniforms = torch.stack(
        [torch.rand(n_init, k, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    )  # (B, n_init, k), on CPU
    xr = xc.repeat_interleave(n_init, dim=0)
    res = lloyd(xr, kmeans_plusplus(xr, k, uniforms.view(B * n_init, k)), max_iter)
    best = res.inertia.view(B, n_init).argmin(dim=1) + torch.arange(B, device=x.device) * n_init
    return KMeansResult(res.labels[best], res.centres[best] + offset, res.inertia[best], res.n_iter)
