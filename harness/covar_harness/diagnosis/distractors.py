"""Distraction objects (issue 14 item 5, docs/design.md section 8): an error can be pulled by *another object*
rather than by the background. The poster separates the two; a mask of the labelled object alone cannot.

With ``--distractors`` the segmenter is asked a second time, for the *predicted* class, on every misclassified
image. An error is a **distractor error** when at least ``--distractor-share`` of its positive importance lies on
patches of the predicted-class object outside the labelled object. BG-Er is then reported with and without them:
``bg_er_without_distractors`` is the share of decided errors that are background-driven and not distractor errors
(so ``bg_er - bg_er_without_distractors`` is the share of background-driven errors another object explains);
``distractor_rate`` is the share of decided errors that are distractor errors. Fine-Er is unchanged.

Only a segmenter that segments what it is prompted with (``prompted = True``, e.g. GroundedSAM) can say where the
predicted class is: a dataset's masks show the labelled object whatever the prompt, so with them the step is off
and says why. This module is a pipeline step after the diagnosis; it reads attribution's and diagnosis's records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from covar_harness.attribution.records import AttributionRecord
from covar_harness.catalog.registry import UsageError
from covar_harness.common.flags import flag
from covar_harness.common.metrics import bootstrap_interval
from covar_harness.diagnosis.rules import DiagnosisRecord
from covar_harness.masks.step import MaskStep, foreground, upstream_masks
from covar_harness.pipeline.contract import PairContext, SampleRecord, Step, StepSummary

if TYPE_CHECKING:
    import numpy as np

    from covar_harness.pipeline.contract import Batch

PATCH_FG = 0.5  # a patch belongs to an object when its mask covers at least half of it


@dataclass(frozen=True)
class DistractorSettings:
    """Whether errors are checked for a distracting predicted-class object, and from what share on."""

    enabled: bool = field(
        default=False,
        metadata=flag(
            "--distractors",
            "segment the predicted class too and count errors pulled by that object (needs a prompted segmenter, "
            "e.g. groundedsam)",
            None,
            action="store_true",
        ),
    )
    share: float = field(
        default=0.5,
        metadata=flag(
            "--distractor-share",
            "share of an error's positive importance on the predicted-class object (outside the label's) from which "
            "it is a distractor error",
            type=float,
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 < self.share <= 1:
            raise UsageError(f"--distractor-share must be in (0, 1], got {self.share!r}")

    def as_config(self) -> dict[str, Any]:
        return {"share": self.share, "patch_fg": PATCH_FG}


@dataclass(frozen=True, eq=False)
class DistractorRecord(SampleRecord):
    """One error's check: whether the headline rule called it background-driven (None: undecided), the share of
    its positive importance on the predicted-class object outside the label's (None: no predicted-class mask, or
    no positive importance) and whether that makes it a distractor error."""

    index: int
    bg_driven: bool | None
    share: float | None
    distractor: bool

    def log_fields(self) -> dict[str, Any]:
        return {"distractor_share": self.share, "distractor": self.distractor}


def distractor_share(importance: np.ndarray, label_fg: np.ndarray, pred_fg: np.ndarray) -> float | None:
    """Share of the positive per-patch importance on patches of the predicted-class object that are not the
    labelled object's; None when nothing has positive importance."""

    positive = np.clip(np.asarray(importance, dtype=np.float64), 0.0, None)
    total = float(positive.sum())
    if total <= 0.0:
        return None
    elsewhere = (np.asarray(pred_fg) >= PATCH_FG) & ~(np.asarray(label_fg) >= PATCH_FG)
    return float(positive[elsewhere].sum() / total)


class DistractorStep(Step):
    """After the diagnosis: the predicted class's mask on every error, the share of its importance there."""

    name = "distractors"

    def __init__(self, settings: DistractorSettings):
        self.settings = settings
        self.ctx: PairContext | None = None
        self.masks: MaskStep | None = None  # the pair's mask step, asked for the predicted class's masks
        self.reason = ""

    def run_settings(self) -> dict[str, Any]:
        return self.settings.as_config()

    def start(self, ctx: PairContext) -> None:
        self.ctx, self.active, self.masks = ctx, False, None
        diagnosing = any(step.name == "diagnosis" and step.active for step in ctx.upstream_of(self))
        masks = upstream_masks(ctx, self)
        if not diagnosing or masks is None or not masks.active:
            self.reason = "no diagnosis on this pair"
        elif not masks.prompted:
            name = masks.segmenter_name
            self.reason = f"segmenter {name!r} shows the labelled object whatever the prompt, not the predicted class"
        else:
            self.active, self.reason, self.masks = True, "", masks

    def process(self, batch: Batch) -> list[DistractorRecord]:
        assert self.masks is not None
        todo = []  # (row, index, attribution, headline driver) of each diagnosed error with a label mask
        for r, i in enumerate(batch.indices):
            diagnosis, attribution = batch.record(i, DiagnosisRecord), batch.record(i, AttributionRecord)
            if diagnosis is None or attribution is None or diagnosis.correct or not diagnosis.has_mask:
                continue
            todo.append((r, i, attribution, next(iter(diagnosis.outcomes.values())).driver))
        preds = [batch.pred(r) for r, *_ in todo]
        pred_masks = self.masks.of_classes([i for _, i, *_ in todo], preds) if todo else []
        out = []
        for (r, i, attribution, driver), pred_fg in zip(todo, pred_masks):
            label_fg = foreground(batch, r)
            share = None
            if pred_fg is not None and label_fg is not None:
                importance = [attribution.cci.importance[c] for c in attribution.cci.assignments]
                share = distractor_share(importance, label_fg, pred_fg)  # type: ignore[arg-type]
            bg = None if driver is None else driver == "bg"
            out.append(DistractorRecord(i, bg, share, share is not None and share >= self.settings.share))
        return out

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        if not self.active:
            return StepSummary(
                config={"status": "off", "reason": self.reason}, notes=[f"--distractors: off ({self.reason})"]
            )
        return summarise([r for r in records if isinstance(r, DistractorRecord)], self.settings)


def summarise(records: list[DistractorRecord], settings: DistractorSettings) -> StepSummary:
    """``distractor_rate`` and ``bg_er_without_distractors`` over the errors the headline rule decided (BG-Er's
    denominator), with per-sample bootstrap intervals, and the counts behind them."""

    decided = [r for r in records if r.bg_driven is not None]
    metrics: dict[str, Any] = {"distractor_rate": None, "bg_er_without_distractors": None}
    intervals: dict[str, Any] = {}
    if decided:
        distractor = np.array([r.distractor for r in decided], dtype=np.float64)
        bg_only = np.array([bool(r.bg_driven) and not r.distractor for r in decided], dtype=np.float64)
        for name, values in (("distractor_rate", distractor), ("bg_er_without_distractors", bg_only)):
            metrics[name] = float(values.mean())
            interval = bootstrap_interval(values, seed=0)
            if interval is not None:
                intervals[name] = [float(interval[0]), float(interval[1])]
    config = {
        **settings.as_config(),
        "status": "ran",
        "n_errors_decided": len(decided),
        "n_distractor": sum(r.distractor for r in decided),
        "n_without_pred_mask": sum(r.share is None for r in decided),
    }
    return StepSummary(metrics=metrics, intervals=intervals, config=config)
