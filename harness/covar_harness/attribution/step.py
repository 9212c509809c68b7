"""The attribution step of the shared evaluator: one attributor on every batch of the zero-shot pass, typed
records per attributed sample, and the pair's summary under ``config.attribution``.

``only_with_masks`` implements ``--attribution auto``: attribution runs on tasks whose samples have foreground
masks, and on others when the diagnosis is on and its segmenter can provide masks
(:func:`~covar_harness.attribution.settings.auto_decision`); otherwise it is switched off and says so in the config.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covar_harness.attribution.base import Attributor, find_attributor
from covar_harness.attribution.engine import (
    Attributed,
    LeaveOneOut,
    attribute,
    check_model,
    reference_from_removal,
    sample_seed,
)
from covar_harness.attribution.records import AttributionRecord, short
from covar_harness.attribution.regions import OUTCOMES
from covar_harness.attribution.removal import can_remove_all_patches, layer_supported
from covar_harness.attribution.settings import DEFAULTS, AttributionSettings, auto_decision, check_maps_dir
from covar_harness.masks.step import MaskStep, foreground, upstream_masks
from covar_harness.pipeline.contract import PairContext, SampleRecord, Step, StepSummary

if TYPE_CHECKING:
    import torch

    from covar_harness.pipeline.contract import Batch


class AttributionStep(Step):
    """Runs one attributor (CCI, cluster Shapley, the random baseline, ...) on every batch.

    Built from one :class:`~covar_harness.attribution.settings.AttributionSettings`, or, as attributor factories
    are called, from a method (name or Attributor class) and keyword settings: ``AttributionStep("cci", k=3)``.
    """

    name = "attribution"

    def __init__(self, settings: AttributionSettings | str | type[Attributor] = "cci", /, **flat: Any):
        if isinstance(settings, AttributionSettings):
            if flat:
                raise TypeError("AttributionStep takes AttributionSettings or keyword settings, not both")
            self.attributor = find_attributor(settings.method)
        else:
            self.attributor = find_attributor(settings)  # an unknown method: one line, before any model loads
            self.attributor.check_k(flat.get("k", DEFAULTS.k))
            settings = AttributionSettings.from_flat(self.attributor.name, **flat)
        self.attributor.check_k(settings.cci.k)
        self.options = settings
        self.method, self.settings = self.attributor.name, settings.cci
        self.only_with_masks = settings.only_with_masks
        # --save-maps: checked now; the maps step (results.maps, after the diagnosis) writes them
        self.save_maps: Path | None = None if settings.save_maps is None else check_maps_dir(settings.save_maps)
        self.status, self.reason, self.n_seen = "ran", "", 0
        self.auto_reason: str | None = None  # auto mode on a task without masks: why attribution runs anyway
        self.ctx: PairContext | None = None
        self.masks: MaskStep | None = None  # the pair's mask step (before this one), when it has one

    @property
    def token_layer(self) -> int | str | None:
        """The block whose tokens k-means clusters: the batch loop then takes them from its own forward."""
        return self.settings.layer if self.active else None

    @property
    def carries_leave_one_out(self) -> bool:
        """Whether each batch gets the embeddings with each cluster removed (``LeaveOneOut``), for concept naming:
        methods that remove clusters one at a time (``Attributor.leave_one_out`` overridden)."""
        return self.attributor.leave_one_out is not Attributor.leave_one_out

    def run_settings(self) -> dict[str, Any]:
        return {"method": self.method, "only_with_masks": self.only_with_masks, **asdict(self.settings)}

    def start(self, ctx: PairContext) -> None:
        """Decide, per model x task, whether attribution runs: auto mode needs masks, the method needs its adapter
        members. Settings the model cannot honour (K above its patch count, a layer it lacks) raise one-line
        ValueError."""
        self.ctx, self.n_seen, self.auto_reason = ctx, 0, None
        self.active, self.status, self.reason = True, "ran", ""
        self.masks = upstream_masks(ctx, self)
        supported, why = self.attributor.supported_by(ctx.adapter)
        runs, auto_why = self._auto(ctx) if self.only_with_masks else (True, "")
        if not runs:
            self.active, self.status, self.reason = False, "off", auto_why
        elif not supported:
            self.active, self.status, self.reason = False, "skipped", why
        elif not layer_supported(ctx.adapter, self.settings.layer):
            self.active, self.status = False, "skipped"
            self.reason = (
                "this adapter gives no input-level tokens (input_tokens; --cci-layer embed)"
                if self.settings.layer == "embed"
                else f"patch_tokens of this adapter takes no layer argument (--cci-layer {self.settings.layer})"
            )
        if self.active:
            check_model(ctx.adapter, self.settings, self.attributor)
            self.auto_reason = auto_why if self.only_with_masks and not ctx.samples.has_masks else None

    @staticmethod
    def _auto(ctx: PairContext) -> tuple[bool, str]:
        """The ``--attribution auto`` decision for this pair, from the task and the run's diagnosis settings."""
        options = ctx.options
        return auto_decision(
            ctx.samples.has_masks,
            getattr(ctx.task, "diagnose", None),
            None if options is None else options.segmenter,
            options is not None and options.diagnosis is not None,
        )

    def process(self, batch: Batch) -> list[AttributionRecord]:
        """One record per attributed sample; nothing when inactive."""
        if not self.active or self.ctx is None:
            return []
        if self._segmenter_failed():
            return []
        self.n_seen += len(batch.indices)
        pred = batch.logits.argmax(dim=-1).cpu()
        target = pred if self.settings.target == "pred" else batch.labels.cpu()
        other = batch.labels.cpu().long() if self.settings.target == "pred" else pred
        rows = list(range(len(batch.indices)))
        if self.settings.attribute_on == "errors":
            rows = [r for r in rows if int(pred[r]) != int(batch.labels[r])]
        if not rows:
            return []
        sel = rows if len(rows) < len(batch.indices) else slice(None)
        tgt, alt_tgt = target[sel], other[sel]
        text, alt_text = batch.class_text(rows, tgt), batch.class_text(rows, alt_tgt)
        seeds = [sample_seed(self.settings.seed, batch.samples.samples[batch.indices[r]].id) for r in rows]
        fg = self._fg(batch, rows)
        result = attribute(
            self.ctx.adapter,
            batch.pixels[sel],
            batch.image_emb[sel],
            text,
            tgt,
            seeds,
            self.settings,
            self.attributor,
            fg=fg,
            classifier=batch.classifier_of(rows) if fg is not None else None,
            tokens=None if batch.tokens is None else batch.tokens[sel],
            alt=("label" if self.settings.target == "pred" else "pred", alt_tgt, alt_text),
        )
        batch.carry(Attributed([batch.indices[r] for r in rows], rows, result))  # the maps step draws it
        removal = LeaveOneOut.of(result, [batch.indices[r] for r in rows])
        if removal is not None:  # for concept naming, read from this batch only (never logged or kept)
            batch.carry(removal)
        return [result.sample_record(batch.indices[r], j) for j, r in enumerate(rows)]

    def _segmenter_failed(self) -> bool:
        """Attribution that runs only because a segmenter was to give masks (``--attribution auto`` on a maskless
        task) stops at the first batch the segmenter fails on (GroundedSAM weights unreachable, say): the
        diagnosis it was for is withdrawn anyway, so the task's remaining CCI passes would be wasted."""
        failed = None if self.masks is None else self.masks.failed
        if self.auto_reason is None or failed is None:
            return False
        self.active, self.status = False, "off"
        self.reason = f"auto: stopped after {self.n_seen} image(s): {failed}"
        return True

    def _fg(self, batch: Batch, rows: list[int]) -> torch.Tensor | None:
        """(R, N) foreground fraction per patch for the attributed rows (NaN rows: no mask), or None when the
        region test is off or no attributed sample has a mask."""
        if not self.settings.counterfactual:
            return None
        grids = [foreground(batch, r) for r in rows]
        if all(g is None for g in grids):
            return None
        import torch  # lazy: ls / --help / plugin discovery import this module without torch

        n = next(len(g) for g in grids if g is not None)
        return torch.from_numpy(
            np.stack([np.full(n, np.nan) if g is None else np.asarray(g, dtype=np.float64) for g in grids])
        ).float()

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        """Settings, status and a numeric summary under ``config``; notes say when attribution did not run."""
        config: dict[str, Any] = {
            "method": self.method if self.active else "none",
            "status": self.status,
            "requested": "auto" if self.only_with_masks else self.method,
        }
        if self.status != "off":  # settings matter (ran, or would have run on a capable model)
            config.update(asdict(self.settings))
        if self.auto_reason is not None:
            config["auto"] = self.auto_reason
        notes = []
        adapter = None if self.ctx is None else self.ctx.adapter
        if not self.active:
            config["reason"] = self.reason
            if self.status == "skipped":
                notes.append(
                    f"attribution ({self.method}) skipped for {getattr(adapter, 'name', 'model')}: {self.reason}"
                )
        else:
            config["summary"] = summarise([r for r in records if isinstance(r, AttributionRecord)], self.n_seen)
            config.update(self.attributor().config(adapter, self.settings))
            from_removal = reference_from_removal(adapter)
            config["s_from"] = "removal path (all-False pattern)" if from_removal else "encode_images"
            empty = can_remove_all_patches(adapter)
            config["counterfactual_empty_region"] = "prefix-only forward" if empty else "undefined (None)"
        return StepSummary(config=config, notes=notes)


def summarise(records: list[AttributionRecord], n_seen: int) -> dict[str, Any]:
    """Numbers that are not fractions of the task (so they stay out of ``metrics``): how many samples were
    attributed, the median/mean largest cluster importance (small = no single region matters, e.g. a
    background cue spread over many clusters), the median s, and how often the top cluster raises s."""
    maxima = [max(r.cci.importance) for r in records]
    out: dict[str, Any] = {"n_attributed": len(records), "n_evaluated": n_seen}
    if maxima:
        out.update(
            {
                "median_max_importance": short(statistics.median(maxima)),
                "mean_max_importance": short(statistics.fmean(maxima)),
                "median_s": short(statistics.median(r.cci.s for r in records)),
                "share_top_cluster_positive": short(sum(m > 0 for m in maxima) / len(maxima)),
                "mean_empty_clusters": short(statistics.fmean(r.cci.k - len(set(r.cci.assignments)) for r in records)),
                **_cluster_shares(records),
            }
        )
    tested = [r.counterfactual.outcome for r in records if r.counterfactual is not None]
    if tested:  # how often each region alone reproduces the decision (None: a region could not run)
        out["counterfactual"] = {
            "n_tested": len(tested),
            **{o: tested.count(o) for o in OUTCOMES},
            "undefined": tested.count(None),
        }
    return out


def _cluster_shares(records: list[AttributionRecord]) -> dict[str, float]:
    """How evenly k-means split the images: mean share of patches in each image's largest and smallest non-empty
    cluster. Why: a layer or normalisation that puts most patches in one cluster explains little (the per-image
    sizes are in the log's ``assignments``)."""

    sizes = [sorted(Counter(r.cci.assignments).values()) for r in records if r.cci.assignments]
    if not sizes:
        return {}
    return {
        "mean_largest_cluster_share": short(statistics.fmean(s[-1] / sum(s) for s in sizes)),
        "mean_smallest_cluster_share": short(statistics.fmean(s[0] / sum(s) for s in sizes)),
    }
