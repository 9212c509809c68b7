"""The clustering-and-removal engine every attributor runs on (docs/design.md section 7).

Per batch of images: patch tokens -> per-image k-means (batched, in torch, on the model's device) -> the
attributor's drop patterns plus the counterfactual region test's two -> ONE call of ``encode_images_without``
(:func:`~covar_harness.attribution.removal.encode_patterns`) -> the attributor's scores -> :class:`Attribution`,
the batch's result, from which each sample's typed record is read.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from covar_harness.attribution.base import Attributor, ClusterBatch, Scores, find_attributor
from covar_harness.attribution.kmeans import batched_kmeans
from covar_harness.attribution.records import AttributionRecord, CCIRecord, short
from covar_harness.attribution.regions import additive_share, region_patterns, region_test
from covar_harness.attribution.removal import encode_patterns, grid_size, patch_tokens
from covar_harness.attribution.settings import CCISettings
from covar_harness.models.adapter import adapter_name, check_shape, n_blocks

if TYPE_CHECKING:
    import torch

    from covar_harness.attribution.regions import RegionTest
    from covar_harness.attribution.shapley import ShapleyValues


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-image seed from the run seed and the sample's id: the same image gets the same clusters
    whatever the batch size, ``--limit`` subset or ``--attribute-on`` filter."""
    return (seed * 0x9E3779B1 + zlib.crc32(sample_id.encode("utf-8"))) % (2**63 - 1)


@dataclass
class Attribution:
    """An attributor's output for a batch, on CPU. Importance of an empty cluster (or of one holding every patch,
    whose removal is undefined) is exactly 0; ``valid`` says which clusters were really removed."""

    method: str
    k: int
    target: torch.Tensor  # (B,) class index explained
    assignments: torch.Tensor  # (B, N) cluster id per patch, raster order
    importance: torch.Tensor  # (B, K) I_k = (s - s_k) / |s|
    drop: torch.Tensor | None  # (B, K) s - s_k (None for the random baseline)
    s: torch.Tensor  # (B,) cos(image, text(target))
    valid: torch.Tensor  # (B, K) bool
    shapley: ShapleyValues | None = None  # cci-shapley only
    regions: RegionTest | None = None  # counterfactual region test, when masks were given
    importance_alt: torch.Tensor | None = None  # (B, K) the other target's I_k, from the same removal call
    alt: str | None = None  # which target ``importance_alt`` explains: "label" or "pred"
    patch_map: torch.Tensor | None = None  # (B, N) per-patch importance of a patch-level method (occlusion)
    shapley_alt: ShapleyValues | None = None  # the other target's Shapley values (cci-shapley), same call
    regions_alt: RegionTest | None = None  # the region test scored for the other target, same call
    # the normalised image embeddings every removal is relative to (B, D) and those with each cluster removed on
    # its own (B, K, D), on the model's device, when the method removes clusters one at a time (CCI, cluster
    # Shapley): what concept naming reads (``Attributor.leave_one_out``); None otherwise
    emb: torch.Tensor | None = None
    without: torch.Tensor | None = None

    def patch_importance(self) -> torch.Tensor:
        """(B, N): each patch's cluster importance (docs/design.md section 7.4), or the method's own per-patch
        map when it scores patches (``Scores.patch``)."""
        if self.patch_map is not None:
            return self.patch_map
        return self.importance.gather(1, self.assignments)

    @cached_property
    def _rows(self) -> dict[str, Any]:
        """The batch's per-row numbers as Python lists, converted once per batch: building a row's record then
        indexes lists instead of tensors (one ``tolist`` per tensor, not several small ones per sample)."""
        return {
            "target": self.target.tolist(),
            "assignments": self.assignments.tolist(),
            "importance": self.importance.tolist(),
            "s": self.s.tolist(),
            "drop": None if self.drop is None else self.drop.tolist(),
            "alt": None if self.importance_alt is None else self.importance_alt.tolist(),
        }

    def record(self, b: int) -> CCIRecord:
        """The ``cci`` entry of row ``b``'s log line (docs/design.md section 6)."""
        rows = self._rows
        return CCIRecord(
            self.method,
            int(rows["target"][b]),
            self.k,
            [int(v) for v in rows["assignments"][b]],
            [short(v) for v in rows["importance"][b]],
            short(float(rows["s"][b])),
            None if rows["drop"] is None else [short(v) for v in rows["drop"][b]],
            **self._alt_field(b),
        )

    def _alt_field(self, b: int) -> dict[str, list[float]]:
        """``{"importance_label": [...]}`` (or ``importance_pred``) for row ``b``; empty without the other target."""
        alt = self._rows["alt"]
        if alt is None or self.alt is None:
            return {}
        return {f"importance_{self.alt}": [short(v) for v in alt[b]]}

    def sample_record(self, index: int, b: int) -> AttributionRecord:
        """Row ``b`` as sample ``index``'s record: ``cci``, and ``shapley`` / ``counterfactual`` when computed,
        each with the other target's values beside (what ``rescore --cci-target`` reads)."""
        shapley = None if self.shapley is None else self.shapley.record(b)
        if shapley is not None and self.shapley_alt is not None and self.alt is not None:
            shapley = replace(shapley, alt=self.alt, values_alt=self.shapley_alt.record(b).values)
        regions = None if self.regions is None else self.regions.record(b)
        if regions is not None and self.regions_alt is not None and self.alt is not None:
            other = self.regions_alt.record(b)
            if other is not None:
                fields = (other.s_fg_only, other.s_bg_only, other.outcome, other.additive_share)
                regions = replace(regions, alt=self.alt, alt_fields=fields)
        return AttributionRecord(index, self.record(b), shapley, regions)


@dataclass
class Attributed:
    """What attribution leaves on a batch for the maps step (``Batch.carry``): the attributed samples ``indices``
    (positions in the SampleSet), their batch ``rows`` and the batch's ``result`` (full precision, unlike the
    records' seven digits: the overlays are drawn from it)."""

    indices: list[int]
    rows: list[int]
    result: Attribution


@dataclass
class LeaveOneOut:
    """What attribution leaves on a batch for later steps (``Batch.carry``): for the attributed samples
    ``indices`` (positions in the SampleSet, in row order), the normalised embeddings ``emb`` (R, D), those with
    each cluster removed ``without`` (R, K, D) and which clusters were removed ``valid`` (R, K)."""

    indices: list[int]
    emb: torch.Tensor
    without: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def of(cls, result: Attribution, indices: list[int]) -> LeaveOneOut | None:
        """The batch's leave-one-out embeddings from an attribution result, None when it has none."""
        if result.emb is None or result.without is None:
            return None
        return cls(indices, result.emb, result.without, result.valid)


def cluster_patterns(assignments: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) ids -> drop patterns (B, K, N) and ``valid`` (B, K). An empty cluster, or one that holds every
    patch, gets an all-False pattern (nothing removed) and is marked invalid."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    patterns = assignments[:, None, :] == torch.arange(k, device=assignments.device)[None, :, None]
    counts = patterns.sum(dim=-1)
    valid = (counts > 0) & (counts < assignments.shape[1])
    return patterns & valid[..., None], valid


def normalize_tokens(tokens: torch.Tensor, how: str) -> torch.Tensor:
    """(B, N, C) tokens as k-means sees them (``--cci-normalize``): ``none`` as given; ``l2`` unit length per token
    (clusters by direction: token norms vary a lot across a ViT's patches); ``ln`` zero mean, unit variance over
    channels per token, without the affine part (what the next block's pre-norm sees)."""
    import torch.nn.functional as F  # lazy: ls / --help / plugin discovery import this module without torch

    normalizers = {
        "none": lambda t: t,
        "l2": lambda t: F.normalize(t, dim=-1),
        "ln": lambda t: F.layer_norm(t, t.shape[-1:]),
    }
    return normalizers[how](tokens)


def cluster(
    adapter: Any,
    pixels: torch.Tensor,
    emb: torch.Tensor,
    text: torch.Tensor,
    target: torch.Tensor,
    seeds: Sequence[int],
    settings: CCISettings,
    tokens: torch.Tensor | None = None,
) -> ClusterBatch:
    """Patch tokens (``tokens`` when the zero-shot forward already gave them) -> k-means clusters ->
    leave-one-out patterns, and s = cos(image, text)."""
    if tokens is None:
        tokens = patch_tokens(adapter, pixels, settings.layer)
    else:
        check_shape(adapter, "encode_images_with_tokens", tokens, (pixels.shape[0], grid_size(adapter), None))
    tokens = normalize_tokens(tokens.float(), settings.normalize)
    km = batched_kmeans(tokens, settings.k, seeds, settings.kmeans_n_init, settings.kmeans_iters)
    patterns, valid = cluster_patterns(km.labels, settings.k)
    emb, text = emb.float(), text.float().to(emb.device)
    return ClusterBatch(
        adapter, pixels, emb, text, target, seeds, settings, km.labels, patterns, valid, (emb * text).sum(dim=-1)
    )


def _region_part(
    fg: torch.Tensor | None, classifier: torch.Tensor | None, main: torch.Tensor, settings: CCISettings
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The counterfactual region test's patterns (foreground only, background only), sent with the attributor's in
    the same removal call, and which images have a mask; (None, None) without masks or a classifier."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    if fg is None or classifier is None:
        return None, None
    masked = ~torch.isnan(fg).any(dim=-1)
    patterns = region_patterns(torch.nan_to_num(fg.to(main.device), nan=0.0), settings.cf_threshold)
    return patterns & masked.to(main.device)[:, None, None], masked


def attribute(
    adapter: Any,
    pixels: torch.Tensor,
    emb: torch.Tensor,
    text: torch.Tensor,
    target: torch.Tensor,
    seeds: Sequence[int],
    settings: CCISettings,
    method: str | type[Attributor] | Attributor = "cci",
    *,
    fg: torch.Tensor | None = None,
    classifier: torch.Tensor | None = None,
    alt: tuple[str, torch.Tensor, torch.Tensor] | None = None,
    tokens: torch.Tensor | None = None,
) -> Attribution:
    """One attributor (a name, class or instance; default CCI) on a batch. ``emb`` (B, D) normalised image
    embeddings, ``text`` (B, D) normalised class embeddings of ``target``; ``seeds`` one per image (see
    ``sample_seed``).

    ``fg`` (B, N) foreground fraction per patch (NaN rows: no mask) with ``classifier`` (D, C), or (B, D, C) per
    image on a class-mapped pair (``Batch.classifier_of``), adds the counterfactual region test. Everything that
    removes patches goes through ONE ``encode_images_without`` call.
    ``alt`` = (name, target, text) of a second target ("label" or "pred"): its importances are scored from the same
    removal embeddings (the removals do not depend on the target), so explaining both costs no model call.
    ``tokens`` (B, N, C): the patch tokens at ``settings.layer`` when the caller has them (the fused forward).
    """
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    kind = find_attributor(method)
    kind.check_k(settings.k)  # K > patches is allowed here (empty clusters); the step refuses it per model
    strategy = method if isinstance(method, Attributor) else kind()
    batch = cluster(adapter, pixels, emb, text, target, seeds, settings, tokens)
    main = strategy.patterns(batch)
    regional, masked = _region_part(fg, classifier, main, settings)
    allp = main if regional is None else torch.cat([main, regional], dim=1)
    batch, without, ran = _encode_all(adapter, pixels, batch, allp)
    n = main.shape[1]
    ours = (without[:, :n], ran[:, :n]) if n and without is not None and ran is not None else (None, None)
    scores = strategy.scores(batch, *ours)
    regions, regions_alt = _regions(without, ran, n, batch, classifier, target, masked, alt)
    s = batch.s if scores.s is None else scores.s
    scores_alt = None if alt is None else _alt_scores(strategy, batch, alt, ours)
    regions, regions_alt = _with_additive(regions, scores, s), _with_additive(regions_alt, scores_alt, None)
    without_k = strategy.leave_one_out(batch, ours[0])
    return Attribution(
        kind.name,
        settings.k,
        target.cpu(),
        batch.labels.cpu(),
        scores.importance.cpu(),
        None if scores.drop is None else scores.drop.cpu(),
        s.cpu(),
        batch.valid.cpu(),
        scores.shapley,
        regions,
        None if scores_alt is None else scores_alt.importance.cpu(),
        None if alt is None else alt[0],
        None if scores.patch is None else scores.patch.cpu(),
        None if scores_alt is None else scores_alt.shapley,
        regions_alt,
        None if without_k is None else batch.emb,
        without_k,
    )


def _regions(
    without: torch.Tensor | None,
    ran: torch.Tensor | None,
    n: int,
    batch: ClusterBatch,
    classifier: torch.Tensor | None,
    target: torch.Tensor,
    masked: torch.Tensor | None,
    alt: tuple[str, torch.Tensor, torch.Tensor] | None,
) -> tuple[RegionTest | None, RegionTest | None]:
    """The region test from the removal call's last two patterns, for the target and (with ``alt``) the other
    target too: the region embeddings do not depend on the class, so both cost no model call."""
    if masked is None:
        return None, None
    # the region patterns went through the call, and _region_part gives them only with a classifier
    assert without is not None and ran is not None and classifier is not None
    regions = region_test(without[:, n:], ran[:, n:], batch.text, classifier, target, masked)
    if alt is None:
        return regions, None
    alt_text = alt[2].float().to(batch.emb.device)
    return regions, region_test(without[:, n:], ran[:, n:], alt_text, classifier, alt[1], masked)


def _encode_all(
    adapter: Any, pixels: torch.Tensor, batch: ClusterBatch, allp: torch.Tensor
) -> tuple[ClusterBatch, torch.Tensor | None, torch.Tensor | None]:
    """The one removal call for every pattern of the batch: (batch, embeddings, ran). In bf16/fp16 an all-False
    pattern rides along and the batch's reference embedding and s are read from it (``reference_from_removal``)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    if not allp.shape[1]:
        return batch, None, None
    reference = reference_from_removal(adapter)
    if reference:
        allp = torch.cat([allp, torch.zeros_like(allp[:, :1])], dim=1)
    without, ran = encode_patterns(adapter, pixels, allp, batch.emb.shape[-1])
    if not reference:
        return batch, without, ran
    ref = without[:, -1].to(batch.emb.device)
    return replace(batch, emb=ref, s=(ref * batch.text).sum(dim=-1)), without[:, :-1], ran[:, :-1]


def reference_from_removal(adapter: Any) -> bool:
    """Whether s (the similarity every I_k is relative to) is read from the removal path (an all-False pattern)
    instead of ``encode_images``: in bf16/fp16 the two code paths round differently, and that difference would
    bias every I_k; in fp32 they agree to ~1e-6 and the extra pattern is skipped."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    return getattr(adapter, "dtype", None) in (torch.bfloat16, torch.float16)


def _alt_scores(
    strategy: Attributor,
    batch: ClusterBatch,
    alt: tuple[str, torch.Tensor, torch.Tensor],
    ours: tuple[torch.Tensor | None, torch.Tensor | None],
) -> Scores:
    """The attributor's importances for the other target, from the embeddings already computed: the batch
    with the other target's text (and its s) in place, scored again. Why: a second removal pass would cost
    K+1 model calls for numbers the first pass already holds."""
    _, target, text = alt
    text = text.float().to(batch.emb.device)
    other = replace(batch, text=text, target=target, s=(batch.emb * text).sum(dim=-1))
    scores = strategy.scores(other, *ours)
    return scores if scores.s is not None else replace(scores, s=other.s)


def _with_additive(regions: RegionTest | None, scores: Scores | None, s: torch.Tensor | None) -> RegionTest | None:
    """The region test with each sample's :func:`~covar_harness.attribution.regions.additive_share` for the
    target ``scores`` explain (``s``: its similarity, else ``scores.s``); unchanged where the method gives no
    leave-one-out drops (``Scores.drop`` None: random, patch-level maps) or there was no region test."""
    s = scores.s if s is None and scores is not None else s
    if regions is None or scores is None or scores.drop is None or s is None:
        return regions
    return replace(regions, additive=additive_share(scores.drop.float().cpu(), s.float().cpu(), regions))


def check_model(adapter: Any, settings: CCISettings, method: str | type[Attributor] = "cci") -> None:
    """Settings that depend on the model, checked before any work: K against the patch count, the layer against
    the block count (``n_blocks``, when the adapter tells it). One-line ValueError; why: otherwise the failure is
    a traceback deep in k-means or, for a wrapped layer index, a silently different layer."""
    find_attributor(method).check_k(settings.k)
    n = grid_size(adapter)
    if settings.k > n:
        raise ValueError(
            f"--cci-k {settings.k} is more than the {n} patches of {adapter_name(adapter)} "
            f"(patch grid {'x'.join(map(str, adapter.patch_grid))}); use --cci-k <= {n}"
        )
    blocks = n_blocks(adapter)
    if settings.layer == "embed":
        return
    if blocks is not None and not -blocks <= int(settings.layer) < blocks:
        raise ValueError(
            f"--cci-layer {settings.layer} is out of range for {adapter_name(adapter)}, which has "
            f"{blocks} blocks (use {-blocks}..{blocks - 1})"
        )
