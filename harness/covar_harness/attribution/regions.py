"""The counterfactual region test (issue 9): does the foreground alone, or the background alone, keep the decision?

On samples with a foreground mask (``counterfactual`` setting, on by default) two more patterns ride the engine's
one removal call: all foreground patches removed (background only) and all background patches removed
(foreground only; a patch is foreground when its mask fraction >= ``cf_threshold``). Predictions over the task's
classifier and similarities to the explained target decide ``bg-sufficient`` / ``fg-sufficient`` / ``both`` /
``neither``. A region with no patch at all is a prefix-only forward where the adapter allows it, else None.

The same two patterns measure how much of the evidence leave-one-out sees (:func:`additive_share`, issue 23):
no extra model call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from covar_harness.attribution.records import RegionRecord, short

if TYPE_CHECKING:
    import torch

OUTCOMES = ("bg-sufficient", "fg-sufficient", "both", "neither")


@dataclass
class RegionTest:
    """The counterfactual region test for a batch; NaN / -1 where a region was empty and could not be run."""

    s_fg_only: torch.Tensor  # (B,) cos(foreground-only image, text(target))
    s_bg_only: torch.Tensor  # (B,)
    pred_fg_only: torch.Tensor  # (B,) argmax over the classifier, -1 when undefined
    pred_bg_only: torch.Tensor  # (B,)
    target: torch.Tensor  # (B,)
    masked: torch.Tensor  # (B,) bool: the sample had a foreground mask (else no test)
    additive: torch.Tensor | None = None  # (B,) :func:`additive_share` (NaN: undefined); None: no drops to sum

    @cached_property
    def _rows(self) -> tuple[list, ...]:
        """The batch as Python lists, converted once (see ``Attribution._rows``)."""
        tensors = (self.masked, self.target, self.s_fg_only, self.s_bg_only, self.pred_fg_only, self.pred_bg_only)
        additive = [] if self.additive is None else self.additive.tolist()
        return (*(t.tolist() for t in tensors), additive)

    def record(self, b: int) -> RegionRecord | None:
        """The ``counterfactual`` entry of one sample's log line; None when the sample had no mask."""
        masked, target, s_fg_only, s_bg_only, pred_fg_only, pred_bg_only, additive = self._rows
        if not bool(masked[b]):
            return None
        s_fg, s_bg = _maybe(s_fg_only[b]), _maybe(s_bg_only[b])
        p_fg = int(pred_fg_only[b]) if int(pred_fg_only[b]) >= 0 else None
        p_bg = int(pred_bg_only[b]) if int(pred_bg_only[b]) >= 0 else None
        share = _maybe(additive[b]) if additive else None
        return RegionRecord(s_fg, s_bg, p_fg, p_bg, region_outcome(int(target[b]), p_fg, p_bg), additive_share=share)


def region_outcome(target: int, pred_fg_only: int | None, pred_bg_only: int | None) -> str | None:
    """Which region alone reproduces the model's own decision (``target``): bg-sufficient, fg-sufficient, both,
    neither; None when either region could not be evaluated (it held no patch and the tower needs one)."""
    if pred_fg_only is None or pred_bg_only is None:
        return None
    fg_ok, bg_ok = pred_fg_only == target, pred_bg_only == target
    return {
        (True, True): "both",
        (True, False): "fg-sufficient",
        (False, True): "bg-sufficient",
        (False, False): "neither",
    }[(fg_ok, bg_ok)]


MIN_UNION_DROP = 0.01  # |s| fraction: below it removing the regions barely moves s and the share is undefined


def additive_share(drop: torch.Tensor, s: torch.Tensor, regions: RegionTest) -> torch.Tensor:
    """(B,) the share of the target's drop that leave-one-cluster-out sees: sum_k (s - s_k) over the clusters,
    divided by (s - s[background only]) + (s - s[foreground only]), the drops of removing each region whole.
    Both are sums of leave-one-part-out drops over a partition of the same patches, so when the similarity is
    additive over patches the share is exactly 1 whatever the clusters and the mask; evidence that several
    clusters each carry alone (redundant evidence, invisible to CCI) pulls it towards 0, synergy above 1. It
    reads the region test's two removals, already in the call: no model call of its own. NaN where the region
    test did not run or the regions' drops sum to under ``MIN_UNION_DROP`` of |s| (nothing to explain)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    union = 2 * s - regions.s_fg_only.to(s.device) - regions.s_bg_only.to(s.device)  # NaN where no test ran
    ok = union > MIN_UNION_DROP * s.abs()
    return torch.where(ok, drop.sum(dim=-1) / union.where(ok, torch.ones_like(union)), torch.nan)


def _maybe(value: float) -> float | None:
    v = float(value)
    return None if math.isnan(v) else short(v)


def region_patterns(fg: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, N) foreground fraction per patch -> (B, 2, N): [drop foreground (background only), drop background
    (foreground only)]. The two regions partition the patches."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    is_fg = fg >= threshold
    return torch.stack([is_fg, ~is_fg], dim=1)


def region_test(
    without: torch.Tensor,
    ran: torch.Tensor,
    text: torch.Tensor,
    classifier: torch.Tensor,
    target: torch.Tensor,
    masked: torch.Tensor,
) -> RegionTest:
    """Similarities and predictions from the two region-only embeddings (B, 2, D) (normalised)."""
    import torch  # lazy: ls / --help / plugin discovery import this module without torch

    sims = (without * text[:, None, :]).sum(dim=-1).cpu()  # (B, 2): [bg only, fg only]
    preds = (without @ classifier.to(without.device)).argmax(dim=-1).cpu()
    ok = ran.cpu() & masked.cpu()[:, None]
    sims = sims.where(ok, torch.full_like(sims, float("nan")))
    preds = preds.where(ok, torch.full_like(preds, -1))
    return RegionTest(sims[:, 1], sims[:, 0], preds[:, 1], preds[:, 0], target.cpu(), masked.cpu())
