"""CCI (Cluster-based Concept Importance, DESIGN section 7) as an analysis step of the shared evaluator.

Per batch of images: patch tokens -> per-image k-means (batched, in torch, on the model's device) -> ONE
call of ``encode_images_without`` with one drop pattern per cluster, (B, K, N) -> s_k, the similarity to the
target class text with cluster k removed -> I_k = (s - s_k) / |s|. Every patch gets its cluster's importance.

What the paper leaves open (paper-notes section 1) is a documented setting here, recorded in the result's
``config.attribution``: K (7), the token layer (-1, the last block), the target (predicted class), the seed,
which samples are attributed, and the k-means restarts / iterations.

A ``random`` baseline shares everything up to the clusters and then draws importances at random: the floor
that any later comparison (faithfulness, fg/bg diagnosis) has to beat.

Beyond the paper (issue 9), both riding on the SAME ``encode_images_without`` call as the clusters:

- ``cci-shapley``: exact Shapley values of the K clusters for s. All 2^K coalitions are patterns of the one call
  (v(S) = cos(image with only the clusters in S kept, text)); leave-one-out CCI importances are read off the same
  values, so the ``cci`` record stays exact. v(all) = s. v(empty) (every patch removed) is a prefix-only forward
  when the adapter says ``can_remove_all_patches`` (CLS readout); otherwise it is DEFINED as 0 (cosine of "no
  evidence"), and the config records which. Empty clusters are null players exactly (their coalitions are mapped
  onto the same value). K > 10 is refused: 2^K passes per image. The 2^K table is built for ``cci-shapley``
  only; every method declares the K it allows (``K_RANGES``), checked when the step is built (before any
  model loads), and K against the model's patch count when a model starts.
- counterfactual region test (when the batch has foreground masks, ``counterfactual`` setting, on by default):
  two more patterns, all foreground patches removed (background only) and all background patches removed
  (foreground only; a patch is foreground when its mask fraction >= ``cf_threshold``). Predictions over the task's
  classifier and similarities to the explained target decide ``bg-sufficient`` / ``fg-sufficient`` / ``both`` /
  ``neither``. A region with no patch at all is a prefix-only forward where the adapter allows it, else None.

torch is imported inside functions so that building a step (``--dry-run``, plugin discovery) stays light.
"""

from __future__ import annotations

import inspect
import math
import statistics
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from covar_harness.adapter import (AdapterContractError, adapter_name, attribution_support, check_shape,
                                   supports_pattern_batches)
from covar_harness.registry import UsageError

if TYPE_CHECKING:
    import torch

    from covar_harness.adapter import ModelAdapter
    from covar_harness.data import SampleSet
    from covar_harness.evaluator import Batch
    from covar_harness.taskconfig import TaskConfig

METHODS = ("cci", "cci-shapley", "random")
MAX_SHAPLEY_K = 10  # 2^K removal passes per image: 1024 at K=10 is the most that stays practical
MAX_K = 64  # CCI: K+1 removal passes per image, (B, K, N) patterns; more clusters than this explain nothing
K_RANGES = {"cci": (2, MAX_K), "cci-shapley": (2, MAX_SHAPLEY_K), "random": (2, MAX_K)}  # allowed K per method
MAX_N_INIT = 100  # k-means restarts run side by side: memory grows with them
MAX_ITERS = 10_000  # Lloyd stops at convergence long before; a cap only bounds a runaway setting
PATTERN_ROWS = 64  # rows per call (at least the batch size) when patterns are flattened for a (B, N) adapter
KMEANS_BUDGET_BYTES = 1 << 30  # above this the restarts' (B * n_init, N, C) copy is split over the images
OUTCOMES = ("bg-sufficient", "fg-sufficient", "both", "neither")
TARGETS = ("pred", "label")
ATTRIBUTE_ON = ("all", "errors")
EPS = 1e-8  # |s| floor: a similarity of exactly 0 would make the relative change undefined


@dataclass(frozen=True)
class CCISettings:
    """Every knob of CCI; all of them end up in the result's ``config.attribution``."""

    k: int = 7  # clusters per image (S7 code and the paper's likely value; S8 suggests 8 is also used)
    layer: int = -1  # which block's patch tokens are clustered; -1 = last block
    target: str = "pred"  # class whose text is explained: predicted class or ground-truth label
    seed: int = 0  # k-means (and random-baseline) seed; mixed with each sample's id
    attribute_on: str = "all"  # all | errors (misclassified samples only)
    kmeans_iters: int = 100  # Lloyd iterations at most (stops earlier when assignments are stable)
    kmeans_n_init: int = 3  # k-means++ restarts per image; the lowest-inertia one is kept
    counterfactual: bool = True  # region test on samples with a foreground mask (2 extra patterns: cheap)
    cf_threshold: float = 0.5  # a patch is foreground for the region test when its mask fraction >= this

    def __post_init__(self) -> None:
        if not _is_int(self.k) or self.k < 2:
            raise UsageError(f"--cci-k must be >= 2 (one cluster would remove every patch), got {self.k}")
        if self.k > MAX_K:
            raise UsageError(f"--cci-k {self.k} is more than {MAX_K} clusters; use --cci-k 2..{MAX_K}")
        if not _is_int(self.layer):
            raise UsageError(f"--cci-layer must be an integer block index, got {self.layer!r}")
        if self.target not in TARGETS:
            raise UsageError(f"--cci-target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.attribute_on not in ATTRIBUTE_ON:
            raise UsageError(f"--attribute-on must be one of {', '.join(ATTRIBUTE_ON)}, got {self.attribute_on!r}")
        if not _is_int(self.kmeans_iters) or not 1 <= self.kmeans_iters <= MAX_ITERS:
            raise UsageError(f"--cci-iters must be in 1..{MAX_ITERS}, got {self.kmeans_iters}")
        if not _is_int(self.kmeans_n_init) or not 1 <= self.kmeans_n_init <= MAX_N_INIT:
            raise UsageError(f"--cci-n-init must be in 1..{MAX_N_INIT} (restarts run side by side in memory), "
                             f"got {self.kmeans_n_init}")
        if not 0.0 <= self.cf_threshold <= 1.0:
            raise UsageError(f"the counterfactual mask threshold must be in [0, 1], got {self.cf_threshold}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_k(method: str, k: Any) -> None:
    """Raise UsageError (one line) when ``method`` does not allow ``k`` clusters (``K_RANGES``). Why here: the CLI
    builds the steps before any model loads, so a bad ``--cci-k`` exits 2 without a download."""
    if method not in K_RANGES:
        raise UsageError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    lo, hi = K_RANGES[method]
    if not _is_int(k) or not lo <= k <= hi:
        if method == "cci-shapley" and _is_int(k) and k > hi:
            raise UsageError(f"cci-shapley evaluates all 2^K cluster coalitions: --cci-k {k} would need {2**k} "
                             f"removal passes per image; use --cci-k <= {MAX_SHAPLEY_K}")
        raise UsageError(f"--cci-k {k} is outside what {method} allows: {lo}..{hi}")


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-image seed from the run seed and the sample's id: the same image gets the same clusters
    whatever the batch size, ``--limit`` subset or ``--attribute-on`` filter."""
    return (seed * 0x9E3779B1 + zlib.crc32(sample_id.encode("utf-8"))) % (2**63 - 1)


# ---- batched k-means --------------------------------------------------------------------------------------
@dataclass
class KMeansResult:
    labels: "torch.Tensor"  # (B, N) long, cluster id per point
    centres: "torch.Tensor"  # (B, K, C)
    inertia: "torch.Tensor"  # (B,) sum of squared distances to the assigned centre
    n_iter: int  # Lloyd iterations run (the batch's slowest row)


def _sq_distances(x: "torch.Tensor", centres: "torch.Tensor") -> "torch.Tensor":
    """(R, N, C), (R, K, C) -> (R, N, K) squared Euclidean distances, via the Gram expansion (no R*N*K*C buffer)."""
    d = (x * x).sum(-1, keepdim=True) - 2 * x @ centres.transpose(1, 2) + (centres * centres).sum(-1)[:, None, :]
    return d.clamp_min_(0)


def kmeans_plusplus(x: "torch.Tensor", k: int, uniforms: "torch.Tensor") -> "torch.Tensor":
    """k-means++ seeding for every row at once. ``uniforms`` (R, k) in [0, 1) make it deterministic and
    device-independent: centre j is drawn by inverse CDF over the current squared distances. When every
    distance is 0 (fewer distinct points than k) the draw is uniform; duplicates then give empty clusters."""
    import torch

    R, N, _ = x.shape
    rows = torch.arange(R, device=x.device)
    u = uniforms.to(x.device, x.dtype)
    x2 = (x * x).sum(-1)

    def sq_dist_to(centre: "torch.Tensor") -> "torch.Tensor":  # (R, C) -> (R, N), no (R, N, C) buffer
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


def _reseed_empty(
    x: "torch.Tensor", dist: "torch.Tensor", empty: "torch.Tensor", centres: "torch.Tensor"
) -> "torch.Tensor":
    """Move each empty cluster's centre onto a point far from its own centre (the j-th empty cluster of a row
    gets the j-th farthest point; sklearn's rule). A cluster whose candidate is at distance 0 stays empty:
    there is nothing left to split. Edits ``centres`` in place; returns (R,) whether a row was reseeded."""
    import torch

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


def lloyd(x: "torch.Tensor", centres: "torch.Tensor", max_iter: int) -> KMeansResult:
    """Lloyd iterations on every row until no row's assignment changes (sklearn's strict convergence,
    i.e. ``tol=0``). Converged rows sit at a fixed point, so iterating them along with the others is harmless."""
    import torch.nn.functional as F

    centres = centres.clone()
    k = centres.shape[1]
    prev = None
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
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
    x: "torch.Tensor", k: int, seeds: Sequence[int], n_init: int = 3, max_iter: int = 100,
    init: "torch.Tensor | None" = None,
) -> KMeansResult:
    """k-means of each row of ``x`` (B, N, C) into ``k`` clusters, all rows at once on ``x``'s device.

    ``seeds`` (one per row) drive k-means++ seeding, ``n_init`` restarts per row, lowest inertia kept.
    ``init`` (B, K, C) gives the initial centres instead (one run; used to compare with scikit-learn).
    Points are centred per row first (as scikit-learn does) so the Gram-expansion distances keep precision.
    When the restarts' copy of ``x`` would exceed ``KMEANS_BUDGET_BYTES``, the images are clustered in groups
    (every row is independent, so only memory changes).
    """
    import torch

    B, N, C = x.shape
    if len(seeds) != B and init is None:
        raise ValueError(f"need one seed per row: {len(seeds)} seeds for {B} rows")
    per_group = max(1, KMEANS_BUDGET_BYTES // max(1, n_init * N * C * x.element_size()))
    if init is None and per_group < B:
        parts = [batched_kmeans(x[i:i + per_group], k, seeds[i:i + per_group], n_init, max_iter)
                 for i in range(0, B, per_group)]
        return KMeansResult(torch.cat([r.labels for r in parts]), torch.cat([r.centres for r in parts]),
                            torch.cat([r.inertia for r in parts]), max(r.n_iter for r in parts))
    offset = x.mean(dim=1, keepdim=True)
    xc = x - offset
    if init is not None:
        res = lloyd(xc, init.to(x.device, x.dtype) - offset, max_iter)
        res.centres = res.centres + offset
        return res
    uniforms = torch.stack([torch.rand(n_init, k, generator=torch.Generator().manual_seed(int(s)),
                                       dtype=torch.float64) for s in seeds])  # (B, n_init, k), on CPU
    xr = xc.repeat_interleave(n_init, dim=0)
    res = lloyd(xr, kmeans_plusplus(xr, k, uniforms.view(B * n_init, k)), max_iter)
    best = res.inertia.view(B, n_init).argmin(dim=1) + torch.arange(B, device=x.device) * n_init
    return KMeansResult(res.labels[best], res.centres[best] + offset, res.inertia[best], res.n_iter)


# ---- CCI proper ---------------------------------------------------------------------------------------------
@dataclass
class Attribution:
    """CCI output for a batch, on CPU. Importance of an empty cluster (or of one holding every patch, whose
    removal is undefined) is exactly 0; ``valid`` says which clusters were really removed."""

    method: str
    k: int
    target: "torch.Tensor"  # (B,) class index explained
    assignments: "torch.Tensor"  # (B, N) cluster id per patch, raster order
    importance: "torch.Tensor"  # (B, K) I_k = (s - s_k) / |s|
    drop: "torch.Tensor | None"  # (B, K) s - s_k (None for the random baseline)
    s: "torch.Tensor"  # (B,) cos(image, text(target))
    valid: "torch.Tensor"  # (B, K) bool
    shapley: "ShapleyValues | None" = None  # cci-shapley only
    regions: "RegionTest | None" = None  # counterfactual region test, when masks were given

    def patch_importance(self) -> "torch.Tensor":
        """(B, N): each patch's cluster importance (DESIGN 7.4)."""
        return self.importance.gather(1, self.assignments)

    def record(self, b: int) -> dict[str, Any]:
        """The ``cci`` entry of one sample's log line (DESIGN 6)."""
        out = {"method": self.method, "target": int(self.target[b]), "k": self.k,
               "assignments": [int(v) for v in self.assignments[b].tolist()],
               "importance": [_short(v) for v in self.importance[b].tolist()],
               "s": _short(float(self.s[b]))}
        if self.drop is not None:
            out["drop"] = [_short(v) for v in self.drop[b].tolist()]
        return out


@dataclass
class ShapleyValues:
    """Exact cluster Shapley values for s, with the two ends of the game (efficiency: sum = v_all - v_empty)."""

    values: "torch.Tensor"  # (B, K) float64
    v_all: "torch.Tensor"  # (B,) = s
    v_empty: "torch.Tensor"  # (B,) prefix-only forward, or 0 by convention (see ``v_empty_rule``)
    v_empty_rule: str

    def record(self, b: int) -> dict[str, Any]:
        return {"values": [_short(v) for v in self.values[b].tolist()], "v_all": _short(float(self.v_all[b])),
                "v_empty": _short(float(self.v_empty[b]))}


@dataclass
class RegionTest:
    """The counterfactual region test for a batch; NaN / -1 where a region was empty and could not be run."""

    s_fg_only: "torch.Tensor"  # (B,) cos(foreground-only image, text(target))
    s_bg_only: "torch.Tensor"  # (B,)
    pred_fg_only: "torch.Tensor"  # (B,) argmax over the classifier, -1 when undefined
    pred_bg_only: "torch.Tensor"  # (B,)
    target: "torch.Tensor"  # (B,)
    masked: "torch.Tensor"  # (B,) bool: the sample had a foreground mask (else no test)

    def record(self, b: int) -> dict[str, Any] | None:
        """The ``counterfactual`` entry of one sample's log line; None when the sample had no mask."""
        if not bool(self.masked[b]):
            return None
        s_fg, s_bg = _maybe(self.s_fg_only[b]), _maybe(self.s_bg_only[b])
        p_fg = int(self.pred_fg_only[b]) if int(self.pred_fg_only[b]) >= 0 else None
        p_bg = int(self.pred_bg_only[b]) if int(self.pred_bg_only[b]) >= 0 else None
        return {"s_fg_only": s_fg, "s_bg_only": s_bg, "pred_fg_only": p_fg, "pred_bg_only": p_bg,
                "outcome": region_outcome(int(self.target[b]), p_fg, p_bg)}


def region_outcome(target: int, pred_fg_only: int | None, pred_bg_only: int | None) -> str | None:
    """Which region alone reproduces the model's own decision (``target``): bg-sufficient, fg-sufficient, both,
    neither; None when either region could not be evaluated (it held no patch and the tower needs one)."""
    if pred_fg_only is None or pred_bg_only is None:
        return None
    fg_ok, bg_ok = pred_fg_only == target, pred_bg_only == target
    return {(True, True): "both", (True, False): "fg-sufficient", (False, True): "bg-sufficient",
            (False, False): "neither"}[(fg_ok, bg_ok)]


def _maybe(value: "torch.Tensor") -> float | None:
    v = float(value)
    return None if math.isnan(v) else _short(v)


def _short(value: float) -> float:
    """Seven significant digits: enough for analysis, keeps sample logs small."""
    return float(f"{value:.7g}")


def patch_tokens(adapter: Any, pixels: "torch.Tensor", layer: int) -> "torch.Tensor":
    """The adapter's patch tokens at ``layer`` (float32). Older adapters without a ``layer`` argument give the
    last block only; asking them for another layer is an error that ``layer_supported`` catches up front.
    The result must be (B, N, C) with N = rows * cols of ``patch_grid`` (else AdapterContractError)."""
    if layer == -1 and not layer_supported(adapter):
        tokens = adapter.patch_tokens(pixels)
    else:
        tokens = adapter.patch_tokens(pixels, layer=layer)
    check_shape(adapter, "patch_tokens", tokens, (pixels.shape[0], grid_size(adapter), None))
    return tokens.float()


def grid_size(adapter: Any) -> int:
    """N = rows * cols of the adapter's ``patch_grid``; AdapterContractError when it is not two positive ints."""
    grid = getattr(adapter, "patch_grid", None)
    try:
        rows, cols = (int(g) for g in grid)
        ok = rows >= 1 and cols >= 1 and (rows, cols) == tuple(grid)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise AdapterContractError(f"adapter {adapter_name(adapter)!r}: patch_grid must be (rows, cols) of positive "
                                   f"integers, got {grid!r}")
    return rows * cols


def layer_supported(adapter: Any) -> bool:
    try:
        params = inspect.signature(adapter.patch_tokens).parameters
    except (TypeError, ValueError):
        return False
    return "layer" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def cluster_patterns(assignments: "torch.Tensor", k: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(B, N) ids -> drop patterns (B, K, N) and ``valid`` (B, K). An empty cluster, or one that holds every
    patch, gets an all-False pattern (nothing removed) and is marked invalid."""
    import torch

    patterns = assignments[:, None, :] == torch.arange(k, device=assignments.device)[None, :, None]
    counts = patterns.sum(dim=-1)
    valid = (counts > 0) & (counts < assignments.shape[1])
    return patterns & valid[..., None], valid


def can_remove_all_patches(adapter: Any) -> bool:
    """Whether ``encode_images_without(..., allow_empty=True)`` may drop every patch (see token_removal)."""
    return getattr(adapter, "can_remove_all_patches", False) is True


def encode_patterns(
    adapter: Any, pixels: "torch.Tensor", patterns: "torch.Tensor", dim: int | None = None,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(B, P, N) patterns -> L2-normalised (B, P, D) embeddings and (B, P) ``ran``, through
    :func:`encode_without` (ONE call when the adapter takes pattern batches). ``dim``: the D to expect.

    A pattern that removes every patch runs only when the adapter keeps a prefix token; otherwise it is replaced
    by "remove nothing" and marked not ``ran`` (its embedding must not be used)."""
    import torch
    import torch.nn.functional as F

    empty = patterns.all(dim=-1)
    if not bool(empty.any()):
        return F.normalize(encode_without(adapter, pixels, patterns, dim), dim=-1), ~empty
    if can_remove_all_patches(adapter):
        out = encode_without(adapter, pixels, patterns, dim, allow_empty=True)
        return F.normalize(out, dim=-1), torch.ones_like(empty)
    out = encode_without(adapter, pixels, patterns & ~empty[..., None], dim)
    return F.normalize(out, dim=-1), ~empty


def encode_without(
    adapter: Any, pixels: "torch.Tensor", patterns: "torch.Tensor", dim: int | None = None, **options: Any,
) -> "torch.Tensor":
    """(B, P, D) float embeddings for (B, P, N) drop patterns, honouring the adapter's declared contract.

    Adapters declaring ``supports_pattern_batches`` get the (B, P, N) patterns in one call. Every other adapter
    gets the public (B, N) contract: the patterns flattened to (B*P, N) rows, each with its image's pixels
    (``repeat_interleave`` order), in calls of at most max(B, PATTERN_ROWS) rows, reshaped back. Every result is
    shape-checked, so a wrong one fails the pair with one line instead of broadcasting into wrong numbers."""
    import torch

    B, P, N = patterns.shape
    if supports_pattern_batches(adapter):
        out = adapter.encode_images_without(pixels, patterns, **options)
        check_shape(adapter, "encode_images_without", out, (B, P, dim))
        return out.float()
    rows = patterns.reshape(B * P, N)
    step = max(B, PATTERN_ROWS)
    parts = []
    for start in range(0, B * P, step):
        stop = min(B * P, start + step)
        images = torch.arange(start, stop, device=pixels.device) // P
        out = adapter.encode_images_without(pixels[images], rows[start:stop], **options)
        check_shape(adapter, "encode_images_without", out, (stop - start, dim))
        dim = int(out.shape[1])
        parts.append(out.float().to(parts[0].device) if parts else out.float())
    return torch.cat(parts).view(B, P, -1) if parts else patterns.new_zeros((B, P, dim or 0), dtype=torch.float32)


def similarity_drops(
    adapter: Any, pixels: "torch.Tensor", emb: "torch.Tensor", text: "torch.Tensor", patterns: "torch.Tensor",
    valid: "torch.Tensor",
) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """(s, drop, importance) from one batched ``encode_images_without`` call with (B, K, N) patterns.

    ``emb`` (B, D) and ``text`` (B, D) are L2-normalised, so s is a dot product. The embedding without
    cluster k is normalised the same way the harness normalises ``encode_images``.
    """
    without, _ = encode_patterns(adapter, pixels, patterns, emb.shape[-1])
    return cci_from_embeddings(emb, text, without.to(emb.device), valid)


def cci_from_embeddings(emb, text, without, valid) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """(s, drop, importance) from the normalised embeddings without each cluster (B, K, D)."""
    s = (emb * text).sum(dim=-1)
    s_k = (without * text[:, None, :]).sum(dim=-1)
    return _importance(s, s_k, valid)


def _importance(s, s_k, valid) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    drop = (s[:, None] - s_k) * valid.to(s.device)
    return s, drop, drop / s.abs().clamp_min(EPS)[:, None]


# ---- cluster Shapley values ------------------------------------------------------------------------------------
def coalition_table(k: int) -> "torch.Tensor":
    """(2^K, K) bool: row c keeps cluster j iff bit j of c is set (row 0 = empty coalition, last = all)."""
    import torch

    c = torch.arange(2**k)
    return (c[:, None] >> torch.arange(k)[None, :]) & 1 == 1


def coalition_patterns(assignments: "torch.Tensor", k: int) -> "torch.Tensor":
    """(B, N) cluster ids -> (B, 2^K, N) drop patterns: a patch is dropped when its cluster is not in S."""
    table = coalition_table(k).to(assignments.device)  # (2^K, K)
    kept = table[:, assignments]  # (2^K, B, N)
    return ~kept.permute(1, 0, 2)


def canonical_coalitions(assignments: "torch.Tensor", k: int) -> "torch.Tensor":
    """(B, 2^K) index of each coalition with its empty clusters removed: coalitions that differ only by empty
    clusters remove the same patches, so they share ONE value and an empty cluster is an exact null player."""
    import torch

    present = torch.zeros(assignments.shape[0], k, dtype=torch.long)
    present.scatter_(1, assignments.cpu(), 1)
    bits = (present << torch.arange(k)[None, :]).sum(dim=1)  # (B,) bitmask of non-empty clusters
    return torch.arange(2**k)[None, :] & bits[:, None]


def shapley_from_values(v: "torch.Tensor", k: int) -> "torch.Tensor":
    """Exact Shapley values (B, K) from coalition values v (B, 2^K) indexed as in ``coalition_table``:
    phi_i = sum over S not containing i of |S|! (K-|S|-1)! / K! * (v(S + i) - v(S)). Computed in float64."""
    import torch

    v = v.double()
    c = torch.arange(2**k)
    size = coalition_table(k).sum(dim=1)
    weight = torch.tensor([math.factorial(n) * math.factorial(k - n - 1) / math.factorial(k) if n < k else 0.0
                           for n in range(k + 1)], dtype=torch.float64)
    phi = torch.zeros(v.shape[0], k, dtype=torch.float64)
    for i in range(k):
        without_i = c[(c >> i) & 1 == 0]
        phi[:, i] = ((v[:, without_i | (1 << i)] - v[:, without_i]) * weight[size[without_i]]).sum(dim=1)
    return phi


def shapley_game(
    v_raw: "torch.Tensor", ran: "torch.Tensor", s: "torch.Tensor", assignments: "torch.Tensor", k: int, exact_empty: bool,
) -> tuple[ShapleyValues, "torch.Tensor"]:
    """Coalition values -> (ShapleyValues, v (B, 2^K) float64). v(all) = s; v(empty) = the prefix-only forward when
    it ran, else 0 by convention; coalitions are canonicalised (see ``canonical_coalitions``)."""
    v = v_raw.double().cpu().clone()
    v[:, -1] = s.double().cpu()
    v[:, 0] = v[:, 0].where(ran[:, 0].cpu(), v.new_zeros(()))
    v = v.gather(1, canonical_coalitions(assignments, k))
    rule = "prefix-only forward (CLS readout)" if exact_empty else "0 by convention (no prefix token)"
    return ShapleyValues(shapley_from_values(v, k), v[:, -1].clone(), v[:, 0].clone(), rule), v


# ---- counterfactual region test ----------------------------------------------------------------------------------
def region_patterns(fg: "torch.Tensor", threshold: float) -> "torch.Tensor":
    """(B, N) foreground fraction per patch -> (B, 2, N): [drop foreground (background only), drop background
    (foreground only)]. The two regions partition the patches."""
    import torch

    is_fg = fg >= threshold
    return torch.stack([is_fg, ~is_fg], dim=1)


def region_test(
    without: "torch.Tensor", ran: "torch.Tensor", text: "torch.Tensor", classifier: "torch.Tensor",
    target: "torch.Tensor", masked: "torch.Tensor",
) -> RegionTest:
    """Similarities and predictions from the two region-only embeddings (B, 2, D) (normalised)."""
    import torch

    sims = (without * text[:, None, :]).sum(dim=-1).cpu()  # (B, 2): [bg only, fg only]
    preds = (without @ classifier.to(without.device)).argmax(dim=-1).cpu()
    ok = ran.cpu() & masked.cpu()[:, None]
    sims = sims.where(ok, torch.full_like(sims, float("nan")))
    preds = preds.where(ok, torch.full_like(preds, -1))
    return RegionTest(sims[:, 1], sims[:, 0], preds[:, 1], preds[:, 0], target.cpu(), masked.cpu())


def attribute(
    adapter: Any, pixels: "torch.Tensor", emb: "torch.Tensor", text: "torch.Tensor", target: "torch.Tensor",
    seeds: Sequence[int], settings: CCISettings, method: str = "cci", *, fg: "torch.Tensor | None" = None,
    classifier: "torch.Tensor | None" = None,
) -> Attribution:
    """CCI (or cci-shapley, or the random baseline) for a batch. ``emb`` (B, D) normalised image embeddings,
    ``text`` (B, D) normalised class embeddings of ``target``; ``seeds`` one per image (see ``sample_seed``).

    ``fg`` (B, N) foreground fraction per patch (NaN rows: no mask) with ``classifier`` (D, C) adds the
    counterfactual region test. Everything that removes patches goes through ONE ``encode_images_without`` call.
    """
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}")
    check_k(method, settings.k)  # K > patches is allowed here (empty clusters); the step refuses it per model
    tokens = patch_tokens(adapter, pixels, settings.layer)
    km = batched_kmeans(tokens, settings.k, seeds, settings.kmeans_n_init, settings.kmeans_iters)
    patterns, valid = cluster_patterns(km.labels, settings.k)
    emb, text = emb.float(), text.float().to(emb.device)
    s = (emb * text).sum(dim=-1)
    if method == "cci-shapley":  # the 2^K coalition table only where it is used
        main = coalition_patterns(km.labels, settings.k)
    else:
        main = patterns if method == "cci" else patterns[:, :0]
    parts = [main]
    masked = None
    if fg is not None and classifier is not None:
        masked = ~torch.isnan(fg).any(dim=-1)
        parts.append(region_patterns(torch.nan_to_num(fg.to(main.device), nan=0.0), settings.cf_threshold)
                     & masked.to(main.device)[:, None, None])
    allp = torch.cat(parts, dim=1)
    without, ran = (encode_patterns(adapter, pixels, allp, emb.shape[-1]) if allp.shape[1] else (None, None))
    n_main = main.shape[1]
    shapley, drop = None, None
    if method == "cci":
        s, drop, importance = cci_from_embeddings(emb, text, without[:, :n_main].to(emb.device), valid)
    elif method == "cci-shapley":
        v_raw = (without[:, :n_main].to(emb.device) * text[:, None, :]).sum(dim=-1)
        shapley, v = shapley_game(v_raw, ran[:, :n_main], s, km.labels, settings.k, can_remove_all_patches(adapter))
        full = 2**settings.k - 1
        s_k = v[:, [full ^ (1 << j) for j in range(settings.k)]].to(s.dtype).to(emb.device)
        _, drop, importance = _importance(s, s_k, valid)
    else:
        draws = torch.stack([torch.rand(settings.k, generator=torch.Generator().manual_seed(int(sd) + 1))
                             for sd in seeds])
        importance = draws * valid.cpu()
    regions = None
    if masked is not None:
        regions = region_test(without[:, n_main:], ran[:, n_main:], text, classifier, target, masked)
    return Attribution(method, settings.k, target.cpu(), km.labels.cpu(), importance.cpu(),
                       None if drop is None else drop.cpu(), s.cpu(), valid.cpu(), shapley, regions)


def check_model(adapter: Any, settings: CCISettings, method: str = "cci") -> None:
    """Settings that depend on the model, checked before any work: K against the patch count, the layer against
    the block count (``n_blocks``, when the adapter tells it). One-line ValueError; why: otherwise the failure is
    a traceback deep in k-means or, for a wrapped layer index, a silently different layer."""
    check_k(method, settings.k)
    n = grid_size(adapter)
    if settings.k > n:
        raise ValueError(f"--cci-k {settings.k} is more than the {n} patches of {adapter_name(adapter)} "
                         f"(patch grid {'x'.join(map(str, adapter.patch_grid))}); use --cci-k <= {n}")
    blocks = getattr(adapter, "n_blocks", None)
    if _is_int(blocks) and blocks > 0 and not -blocks <= settings.layer < blocks:
        raise ValueError(f"--cci-layer {settings.layer} is out of range for {adapter_name(adapter)}, which has "
                         f"{blocks} blocks (use {-blocks}..{blocks - 1})")


# ---- the evaluator step ---------------------------------------------------------------------------------------
class AttributionStep:
    """BatchStep running CCI (or the random baseline) on every batch of the zero-shot pass.

    ``only_with_masks`` implements ``--attribution auto``: attribution runs on tasks whose samples have
    foreground masks and is switched off (and says so in the config) on the others.
    """

    name = "attribution"

    def __init__(
        self, method: str = "cci", *, k: int = 7, layer: int = -1, target: str = "pred", seed: int = 0,
        attribute_on: str = "all", kmeans_iters: int = 100, kmeans_n_init: int = 3,
        save_maps: str | Path | None = None, only_with_masks: bool = False, counterfactual: bool = True,
        cf_threshold: float = 0.5,
    ):
        check_k(method, k)  # also rejects an unknown method; one line, before any model loads
        self.method = method
        self.settings = CCISettings(k, layer, target, seed, attribute_on, kmeans_iters, kmeans_n_init,
                                    counterfactual, cf_threshold)
        self.save_maps = check_maps_dir(save_maps) if save_maps else None
        self.only_with_masks = only_with_masks
        self._reset()

    def _reset(self) -> None:
        self.active, self.status, self.reason = True, "ran", ""
        self.adapter = self.task = self.samples = self.model_spec = None
        self.n_seen = self.n_maps = 0
        self.maps_error: str | None = None  # why --save-maps stopped writing for this pair
        # the latest batch's (batch rows attributed, Attribution): a later step in the same batch loop (the
        # fg/bg diagnosis) reads the maps here instead of recomputing them
        self.last: tuple[list[int], Attribution] | None = None

    def start(self, adapter: "ModelAdapter", task: "TaskConfig", samples: "SampleSet", *,
              model_spec: str | None = None) -> None:
        """Decide, per model x task, whether attribution runs: auto mode needs masks, CCI needs the capability.
        Settings the model cannot honour (K above its patch count, a layer it lacks) raise one-line ValueError.
        ``model_spec``: the ``--models`` spec, so ``--save-maps`` folders match the result folders."""
        self._reset()
        self.adapter, self.task, self.samples, self.model_spec = adapter, task, samples, model_spec
        supported, why = attribution_support(adapter)
        if self.only_with_masks and not samples.has_masks:
            self.active, self.status, self.reason = False, "off", "auto: the task has no foreground masks"
        elif not supported:
            self.active, self.status, self.reason = False, "skipped", why
        elif self.settings.layer != -1 and not layer_supported(adapter):
            self.active, self.status = False, "skipped"
            self.reason = f"patch_tokens of this adapter takes no layer argument (--cci-layer {self.settings.layer})"
        if self.active:
            check_model(adapter, self.settings, self.method)

    def process(self, batch: "Batch") -> list[dict]:
        """One record per attributed sample: {"index", "cci"}; nothing when inactive."""
        self.last = None
        if not self.active:
            return []
        self.n_seen += len(batch.indices)
        pred = batch.logits.argmax(dim=-1).cpu()
        target = pred if self.settings.target == "pred" else batch.labels.cpu()
        rows = list(range(len(batch.indices)))
        if self.settings.attribute_on == "errors":
            rows = [r for r in rows if int(pred[r]) != int(batch.labels[r])]
        if not rows:
            return []
        sel = rows if len(rows) < len(batch.indices) else slice(None)
        tgt = target[sel]
        text = batch.classifier[:, tgt.to(batch.classifier.device)].T
        seeds = [sample_seed(self.settings.seed, batch.samples.samples[batch.indices[r]].id) for r in rows]
        fg = self._fg(batch, rows)
        result = attribute(self.adapter, batch.pixels[sel], batch.image_emb[sel], text, tgt, seeds,
                           self.settings, self.method, fg=fg, classifier=batch.classifier if fg is not None else None)
        self.last = (rows, result)
        records = [self._record(batch.indices[r], result, j) for j, r in enumerate(rows)]
        if self.save_maps is not None:
            self._write_maps(batch, rows, result)
        return records

    def _fg(self, batch: "Batch", rows: list[int]) -> "torch.Tensor | None":
        """(R, N) foreground fraction per patch for the attributed rows (NaN rows: no mask), or None when the
        region test is off or no attributed sample has a mask."""
        if not self.settings.counterfactual or batch.fg is None:
            return None
        grids = [batch.fg[r] for r in rows]
        if all(g is None for g in grids):
            return None
        import numpy as np
        import torch

        n = next(len(g) for g in grids if g is not None)
        return torch.from_numpy(np.stack([np.full(n, np.nan) if g is None else np.asarray(g, dtype=np.float64)
                                          for g in grids])).float()

    @staticmethod
    def _record(index: int, result: Attribution, j: int) -> dict:
        """One sample's log fields: ``cci`` always, ``shapley`` and ``counterfactual`` when computed."""
        out: dict[str, Any] = {"index": index, "cci": result.record(j)}
        if result.shapley is not None:
            out["shapley"] = result.shapley.record(j)
        if result.regions is not None and (region := result.regions.record(j)) is not None:
            out["counterfactual"] = region
        return out

    def maps_folder(self) -> Path:
        """``SAVE_MAPS/<model slug>/<task slug>``: the slugs of the result folder (``results.slug``) of the
        model spec (the adapter's name only when no spec was given) and the task."""
        from covar_harness import results

        model = self.model_spec or adapter_name(self.adapter)
        task = getattr(self.task, "task", None) or "task"
        return self.save_maps / results.slug(model) / results.slug(task)

    def _write_maps(self, batch: "Batch", rows: list[int], result: Attribution) -> None:
        """One overlay PNG per attributed sample. A map that cannot be written (full or read-only disk) stops
        the maps of this pair with a note; the attribution records and the result file are unaffected."""
        from covar_harness import overlays, results
        from covar_harness.console import safe

        if self.maps_error is not None:
            return
        folder = self.maps_folder()
        grid = tuple(self.adapter.patch_grid)
        imp = result.patch_importance()
        for j, r in enumerate(rows):
            index = batch.indices[r]
            mask = overlays.mask_in_input_frame(batch.samples, index, self.adapter.preprocess)
            stem = results.slug(Path(batch.samples.samples[index].id).stem)
            try:
                overlays.save_overlay(folder / f"{index:06d}_{stem}.png", batch.pixels[r], imp[j].view(grid),
                                      result.assignments[j].view(grid), mask, self.adapter.preprocess)
            except (OSError, ValueError) as exc:
                self.maps_error = safe(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
                return
            self.n_maps += 1

    def finish(self, records: list[dict]) -> dict:
        """Settings, status and a numeric summary under ``config``; notes say when attribution did not run."""
        config: dict[str, Any] = {"method": self.method if self.active else "none", "status": self.status,
                                  "requested": "auto" if self.only_with_masks else self.method}
        if self.status != "off":  # settings matter (ran, or would have run on a capable model)
            config.update(asdict(self.settings))
        notes = []
        if not self.active:
            config["reason"] = self.reason
            if self.status == "skipped":
                name = getattr(self.adapter, "name", "model")
                notes.append(f"attribution ({self.method}) skipped for {name}: {self.reason}")
        else:
            config["summary"] = summarise(records, self.n_seen)
            empty = can_remove_all_patches(self.adapter)
            if self.method == "cci-shapley":
                config["shapley"] = {"v_empty": "prefix-only forward (CLS readout)" if empty
                                     else "0 by convention (no prefix token)", "coalitions": 2**self.settings.k}
            config["counterfactual_empty_region"] = "prefix-only forward" if empty else "undefined (None)"
            if self.save_maps is not None:
                config["maps_dir"] = str(self.save_maps)
                config["summary"]["n_maps"] = self.n_maps
                if self.maps_error is not None:
                    config["maps_error"] = self.maps_error
                    notes.append(f"--save-maps stopped after {self.n_maps} map(s): {self.maps_error}")
        return {"metrics": {}, "config": config, "notes": notes}


def check_maps_dir(save_maps: str | Path) -> Path:
    """``--save-maps`` checked before any model loads: a regular file on the way, or a folder that cannot be
    created or written, is a one-line UsageError (rather than every pair failing later)."""
    import os

    path = Path(save_maps).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"--save-maps {str(path)!r}: {str(probe)!r} is not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--save-maps {str(path)!r}: {str(probe)!r} is not writable")
    return path


def summarise(records: list[dict], n_seen: int) -> dict[str, Any]:
    """Numbers that are not fractions of the task (so they stay out of ``metrics``): how many samples were
    attributed, the median/mean largest cluster importance (small = no single region matters, e.g. a
    background cue spread over many clusters), the median s, and how often the top cluster raises s."""
    maxima = [max(r["cci"]["importance"]) for r in records]
    out: dict[str, Any] = {"n_attributed": len(records), "n_evaluated": n_seen}
    if maxima:
        out.update({
            "median_max_importance": _short(statistics.median(maxima)),
            "mean_max_importance": _short(statistics.fmean(maxima)),
            "median_s": _short(statistics.median(r["cci"]["s"] for r in records)),
            "share_top_cluster_positive": _short(sum(m > 0 for m in maxima) / len(maxima)),
            "mean_empty_clusters": _short(statistics.fmean(
                r["cci"]["k"] - len(set(r["cci"]["assignments"])) for r in records)),
        })
    tested = [r["counterfactual"]["outcome"] for r in records if "counterfactual" in r]
    if tested:  # how often each region alone reproduces the decision (None: a region could not run)
        out["counterfactual"] = {"n_tested": len(tested), **{o: tested.count(o) for o in OUTCOMES},
                                 "undefined": tested.count(None)}
    return out
