"""The mask step: the first step of a pair's pipeline (docs/design.md section 7.5). Per batch it asks the segmenter
for every sample's foreground and maps it onto the model's patch grid (:class:`PatchMasks`), as one
:class:`MaskRecord` per sample; attribution (the region test), the diagnosis, the distractor check, concept naming
and the maps read those records of the same batch (:func:`foreground`), so data only flows forward.

Masks are made for a pair only when a later step asks for them as it starts (:meth:`MaskStep.request`: the
diagnosis does, when it will run): a segmenter is built, and GroundedSAM's passes are paid, only for a pair that
will be diagnosed. A segmenter that fails part-way switches the masks off for the rest of the pair
(``MaskStep.failed`` says why); the diagnosis then withdraws itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from covar_harness.masks.patch_masks import PatchMasks
from covar_harness.masks.segmenter import choose_segmenter
from covar_harness.models.adapter import attribution_support
from covar_harness.pipeline.contract import PairContext, SampleRecord, Step, StepSummary

if TYPE_CHECKING:
    import numpy as np

    from covar_harness.pipeline.contract import Batch


@dataclass(frozen=True, eq=False)
class MaskRecord(SampleRecord):
    """One sample's foreground on the patch grid: ``fg`` (rows*cols,) float32 fraction per patch, raster order,
    None where the segmenter found no object (or had failed); ``info``, what the segmenter said about it (e.g.
    ``{"n_boxes": 2}``). Logs nothing itself: the diagnosis logs the grid it decided on (``fg``) and the info, so a
    withdrawn diagnosis withdraws them too."""

    index: int
    fg: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)

    def log_fields(self) -> dict[str, Any]:
        return {}


def foreground(batch: Batch, row: int) -> np.ndarray | None:
    """Batch row ``row``'s foreground fraction per patch from the mask step's record; None: no mask (no mask step
    on this pair, or none for this sample)."""
    record = batch.record(batch.indices[row], MaskRecord)
    return None if record is None else record.fg


def upstream_masks(ctx: PairContext, step: Step) -> MaskStep | None:
    """The mask step that runs before ``step`` on this pair, if any."""
    return next((s for s in ctx.upstream_of(step) if isinstance(s, MaskStep)), None)


class MaskStep(Step):
    """Foreground masks on the patch grid, one record per sample of every batch; off until a later step asks."""

    name = "masks"

    def __init__(self, segmenter: str = "auto", settings: dict[str, Any] | None = None):
        self.segmenter, self.settings = segmenter, dict(settings or {})
        self.active = False
        self.ctx: PairContext | None = None
        self.patch_masks: PatchMasks | None = None

    def run_settings(self) -> dict[str, Any]:
        return {"segmenter": self.segmenter, "segmenter_settings": self.settings}

    def start(self, ctx: PairContext) -> None:
        """Nothing is built yet: the step stays off unless a later step asks for masks (:meth:`request`)."""
        self.ctx, self.active, self.patch_masks = ctx, False, None

    @property
    def available(self) -> bool:
        """Whether masks can be had on this pair: a segmenter is chosen (not ``none``) and the model exposes the
        patch grid they are mapped onto."""
        return self.ctx is not None and self.segmenter != "none" and attribution_support(self.ctx.adapter)[0]

    def request(self) -> None:
        """Switch the masks on for this pair (a later step's ``start`` calls it): the segmenter is built now, so a
        segmenter that cannot be had fails the pair before its first batch."""
        ctx = self.ctx
        assert ctx is not None and ctx.catalog is not None, "start() first (the evaluator opens pairs with a catalog)"
        if self.patch_masks is None:
            segmenter = choose_segmenter(self.segmenter, ctx.samples, ctx.catalog, self.settings)
            grid = ctx.adapter.patch_grid
            self.patch_masks = PatchMasks(segmenter, ctx.samples, ctx.classnames, ctx.adapter.preprocess, grid)
        self.active = True

    @property
    def failed(self) -> str | None:
        """Why the segmenter stopped part-way (None: it did not)."""
        return None if self.patch_masks is None else self.patch_masks.failed

    @property
    def prompted(self) -> bool:
        """Whether the segmenter segments what it is prompted with (GroundedSAM), so it can find another class than
        the label's (the distractor check); a dataset's masks show the labelled object whatever the prompt."""
        return self.patch_masks is not None and getattr(self.patch_masks.segmenter, "prompted", False) is True

    @property
    def segmenter_name(self) -> str:
        return "segmenter" if self.patch_masks is None else getattr(self.patch_masks.segmenter, "name", "segmenter")

    def describe(self) -> dict[str, Any]:
        """The segmenter and how many samples had no mask (the diagnosis's ``config.diagnosis.segmenter``)."""
        assert self.patch_masks is not None, "request() first"
        return self.patch_masks.describe()

    def process(self, batch: Batch) -> list[MaskRecord]:
        """One record per sample of the batch, masks or not (a sample without one has ``fg`` None)."""
        assert self.patch_masks is not None
        grids = self.patch_masks.for_batch(batch.indices)
        return [MaskRecord(i, fg, dict(self.patch_masks.sample_info(i))) for i, fg in zip(batch.indices, grids)]

    def of_classes(self, indices: Sequence[int], classes: Sequence[int]) -> list[np.ndarray | None]:
        """The masks of another class per sample (``classes``: e.g. the predictions, for the distractor check),
        not counted as the task's masks; None where there is none."""
        assert self.patch_masks is not None
        return self.patch_masks.for_batch(indices, classes=classes)

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        """No entry of its own: the diagnosis reports the masks it used (``describe``) in its config."""
        return StepSummary()
