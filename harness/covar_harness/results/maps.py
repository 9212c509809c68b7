"""``--save-maps``: the maps step, one overlay PNG per attributed sample (``covar_harness.attribution.overlays`` draws
them), under ``SAVE_MAPS/<model slug>/<task slug>``, the slugs of the result folder, named
``<index:06d>_<correct|wrong>_<slug(file stem)>.png``. Each carries a legend and a caption: label, prediction,
top-5, correct or wrong, and, when the sample has a mask, the fg fraction and driver under each ``--driver-rule``
as the diagnosis logged them (its ``DiagnosisRecord`` of the same batch: nothing is recomputed).

Why here, in ``results``: the maps are an output of the pair named like its result folder (``slug``), and
the step runs after the diagnosis and the distractor check (docs/design.md section 7), so it reads their records;
a stage below the diagnosis could not. A map that cannot be written (full or read-only disk) stops the maps of that
pair with a note; the records and the result file are unaffected.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness.attribution import overlays
from covar_harness.attribution.engine import Attributed
from covar_harness.attribution.overlays import Caption
from covar_harness.attribution.settings import check_maps_dir
from covar_harness.attribution.step import AttributionStep
from covar_harness.common.console import safe
from covar_harness.common.safe_files import slug
from covar_harness.diagnosis.rules import DiagnosisRecord
from covar_harness.models.adapter import adapter_name
from covar_harness.pipeline.contract import PairContext, SampleRecord, Step, StepSummary

if TYPE_CHECKING:
    from covar_harness.pipeline.contract import Batch


class MapStep(Step):
    """The overlay maps of a pair, drawn from what attribution left on each batch (``engine.Attributed``) and
    captioned from the diagnosis's records; the root folder is checked when the step is built. Its summary is
    ``config.maps``: the folder, how many maps were written and the error that stopped them, if any."""

    name = "maps"

    def __init__(self, root: str | Path):
        self.root = check_maps_dir(root)
        self.ctx: PairContext | None = None
        self.n_maps = 0
        self.error: str | None = None

    def run_settings(self) -> dict[str, Any]:
        return {"save_maps": str(self.root)}

    def start(self, ctx: PairContext) -> None:
        """On when an attribution step before it runs on this pair."""
        self.ctx, self.n_maps, self.error = ctx, 0, None
        self.active = any(isinstance(s, AttributionStep) and s.active for s in ctx.upstream_of(self))

    def folder(self) -> Path:
        """``ROOT/<model slug>/<task slug>``: the slugs (``slug``) of the model spec (the adapter's name
        only when no spec was given) and the task."""
        assert self.ctx is not None, "start() first"
        model = self.ctx.model_spec or adapter_name(self.ctx.adapter)
        task = getattr(self.ctx.task, "task", None) or "task"
        return self.root / slug(model) / slug(task)

    def process(self, batch: Batch) -> list[SampleRecord]:
        """One overlay PNG per attributed row of the batch; no records (nothing goes into the sample log)."""
        attributed = batch.carried(Attributed)
        if self.error is not None or self.ctx is None or attributed is None:
            return []
        adapter, folder = self.ctx.adapter, self.folder()
        grid = tuple(adapter.patch_grid)
        result = attributed.result
        imp = result.patch_importance()
        height, width = batch.pixels.shape[-2:]
        for j, (index, r) in enumerate(zip(attributed.indices, attributed.rows)):
            mask = overlays.mask_in_input_frame(batch.samples, index, adapter.preprocess, (int(height), int(width)))
            caption = self.caption(batch, r)
            stem = slug(Path(batch.samples.samples[index].id).stem)
            try:
                overlays.save_overlay(
                    folder / overlays.map_name(index, stem, caption.correct),
                    batch.pixels[r],
                    imp[j].view(grid),
                    result.assignments[j].view(grid),
                    mask,
                    adapter.preprocess,
                    caption=caption,
                )
            except (OSError, ValueError) as exc:
                self.error = safe(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
                return []
            self.n_maps += 1
        return []

    def caption(self, batch: Batch, r: int) -> Caption:
        """The caption of batch row ``r``: label, prediction, top-5 and correct or not from the batch; the fg
        fraction and driver per rule from the sample's diagnosis record (none without a mask)."""
        classnames = list((self.ctx.classnames if self.ctx else None) or batch.samples.classnames or [])
        label, pred = int(batch.labels[r]), batch.pred(r)
        if batch.top is not None:
            top = [int(i) for i in batch.top[r][:5]]
        else:
            top = [int(i) for i in batch.logits[r].topk(min(5, batch.logits.shape[-1])).indices]
        index = batch.indices[r]
        diagnosis = batch.record(index, DiagnosisRecord)
        rules = {} if diagnosis is None or not diagnosis.has_mask else diagnosis.outcomes
        return Caption(
            pred=class_name(classnames, pred),
            top5=[class_name(classnames, i) for i in top],
            label=class_name(classnames, label),
            correct=label == pred,
            rules={name: (o.score, o.driver) for name, o in rules.items()},
            notes=[f"file: {batch.samples.samples[index].id}"],
        )

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        """``config.maps`` (none where attribution did not run); a note when writing stopped."""
        if not self.active:
            return StepSummary()
        config: dict[str, Any] = {"dir": str(self.root), "n_maps": self.n_maps}
        notes = []
        if self.error is not None:
            config["error"] = self.error
            notes.append(f"--save-maps stopped after {self.n_maps} map(s): {self.error}")
        return StepSummary(config=config, notes=notes)


def class_name(classnames: list[str], i: int) -> str:
    """Class ``i``'s name (its number when the list does not have it); the caption makes it plain text."""
    return classnames[i] if 0 <= i < len(classnames) else str(i)
