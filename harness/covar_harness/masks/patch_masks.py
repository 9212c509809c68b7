"""The masks of one task on the model's patch grid (docs/design.md sections 7.5, 8): :class:`PatchMasks` asks
the segmenter for each batch's masks and maps them onto the patch grid (``mask_geometry``); the diagnosis reads
the per-patch foreground fractions. A segmenter that fails switches the masks off for the task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from covar_harness.common.console import safe
from covar_harness.masks.geometry import mask_patch_fractions

if TYPE_CHECKING:
    from covar_harness.data.samples import SampleSet
    from covar_harness.masks.segmenter import Segmenter

log = logging.getLogger("covar_harness.masks.segmenter")  # the logger keeps its name from before the module split


# ---- per task: masks on the model's patch grid -------------------------------------------------------------
class PatchMasks:
    """Foreground fraction of every patch, per sample, in the model's input frame (what diagnosis reads).

    Prompts are the samples' label class names (the task's own names, which may differ from the dataset's).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        samples: SampleSet,
        classnames: Sequence[str],
        preprocess: Callable,
        grid: tuple[int, int],
    ):
        self.segmenter, self.samples, self.classnames = segmenter, samples, list(classnames)
        self.preprocess, self.grid = preprocess, (int(grid[0]), int(grid[1]))
        self.n_missing = 0
        self.failed: str | None = None  # why the segmenter stopped (e.g. its weights cannot be fetched offline)
        self.info: dict[int, dict[str, Any]] = {}  # per sample index: the segmenter's ``last_info`` entry

    def for_batch(self, indices: Sequence[int], classes: Sequence[int] | None = None) -> list[np.ndarray | None]:
        """(rows*cols,) float32 per index, raster order; None where the segmenter found no object. ``classes``:
        the class to segment per index (default each sample's label; the distractor check asks for predictions).

        A segmenter that fails (e.g. GroundedSAM weights unreachable) is not allowed to sink the zero-shot
        and attribution results: it is switched off, and the caller reports why instead of a diagnosis.
        """
        if self.failed is not None:
            return [None] * len(indices)
        wanted = [self.samples.samples[i].label for i in indices] if classes is None else list(classes)
        prompts = [self.classnames[c] for c in wanted]
        stage = "failed"
        try:
            masks = list(self.segmenter.masks(self.samples, list(indices), prompts))
            if len(masks) != len(indices):
                raise ValueError(f"returned {len(masks)} masks for {len(indices)} images")
            stage = "masks cannot be mapped onto the model's patch grid"
            out = [
                None if m is None else mask_patch_fractions(self.preprocess, m, self.grid).reshape(-1) for m in masks
            ]
        except Exception as exc:  # noqa: BLE001 - any failure of a mask provider means: no diagnosis
            self._fail(stage, exc)
            return [None] * len(indices)
        if classes is not None:  # another object than the label's: not the task's masks, so not counted as them
            return out
        self.n_missing += sum(m is None for m in masks)
        about = getattr(self.segmenter, "last_info", None)  # optional: per-mask facts (GroundedSAM: n_boxes)
        if isinstance(about, list) and len(about) == len(indices):
            self.info.update({int(i): dict(a) for i, a in zip(indices, about) if isinstance(a, dict)})
        return out

    def sample_info(self, index: int) -> dict[str, Any]:
        """What the segmenter said about one sample's mask (e.g. ``{"n_boxes": 2}``); {} when nothing."""
        return self.info.get(int(index), {})

    def _fail(self, stage: str, exc: Exception) -> None:
        """Switch the masks off for this task with one line saying why (untrusted text made inert)."""

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        name = safe(getattr(self.segmenter, "name", type(self.segmenter).__name__))
        self.failed = safe(f"segmenter {name!r} {stage}: {type(exc).__name__}: {first}")
        log.warning("%s; diagnosis skipped for this task", self.failed)

    def describe(self) -> dict[str, Any]:
        about = self.segmenter.describe() if hasattr(self.segmenter, "describe") else {"name": self.segmenter.name}
        return {**about, "n_without_mask": self.n_missing}
