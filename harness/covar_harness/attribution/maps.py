"""``--save-maps``: one overlay PNG per attributed sample (``covar_harness.attribution.overlays`` draws them), under
``SAVE_MAPS/<model slug>/<task slug>``, the slugs of the result folder, named
``<index:06d>_<correct|wrong>_<slug(file stem)>.png``. Each carries a legend and a caption: label, prediction,
top-5, correct or wrong, and, when the batch has the sample's foreground (``Batch.fg``, set when the diagnosis
runs), the fg fraction and driver under each ``--driver-rule`` (computed here with the diagnosis's own rules and
settings, without its null draws, from the same record the diagnosis step reads). A map that cannot be written
(full or read-only disk) stops the maps of that pair with a note; the records and the result file are unaffected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness.catalog.registry import UsageError
from covar_harness.common.console import safe
from covar_harness.common.safe_files import slug
from covar_harness.models.adapter import adapter_name

if TYPE_CHECKING:
    from covar_harness.attribution.engine import Attribution
    from covar_harness.attribution.overlays import Caption
    from covar_harness.attribution.records import AttributionRecord
    from covar_harness.pipeline.contract import Batch, PairContext


def check_maps_dir(save_maps: str | Path) -> Path:
    """``--save-maps`` checked before any model loads: a regular file on the way, or a folder that cannot be
    created or written, is a one-line UsageError (rather than every pair failing later)."""
    path = Path(save_maps).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"--save-maps {str(path)!r}: {str(probe)!r} is not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--save-maps {str(path)!r}: {str(probe)!r} is not writable")
    return path


class MapWriter:
    """The overlay maps of one step: the root folder (checked when built), and per pair the count and the error
    that stopped them, if any."""

    def __init__(self, root: str | Path):
        self.root = check_maps_dir(root)
        self.ctx: PairContext | None = None
        self.n_maps = 0
        self.error: str | None = None

    def start(self, ctx: PairContext) -> None:
        self.ctx, self.n_maps, self.error = ctx, 0, None

    def folder(self) -> Path:
        """``ROOT/<model slug>/<task slug>``: the slugs (``slug``) of the model spec (the adapter's name
        only when no spec was given) and the task."""
        assert self.ctx is not None, "start() first"
        model = self.ctx.model_spec or adapter_name(self.ctx.adapter)
        task = getattr(self.ctx.task, "task", None) or "task"
        return self.root / slug(model) / slug(task)

    def write(self, batch: Batch, rows: list[int], result: Attribution) -> None:
        """One overlay PNG per attributed row of the batch (``rows``, in ``result`` order)."""
        from covar_harness.attribution import overlays  # lazy: overlay drawing loads only when maps are written

        if self.error is not None or self.ctx is None:
            return
        adapter, folder = self.ctx.adapter, self.folder()
        grid = tuple(adapter.patch_grid)
        imp = result.patch_importance()
        for j, r in enumerate(rows):
            index = batch.indices[r]
            height, width = batch.pixels.shape[-2:]
            mask = overlays.mask_in_input_frame(batch.samples, index, adapter.preprocess, (int(height), int(width)))
            caption = self.caption(batch, r, result.sample_record(index, j))
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
                return
            self.n_maps += 1

    def caption(self, batch: Batch, r: int, record: AttributionRecord | None = None) -> Caption:
        """The caption of batch row ``r``: label, prediction, top-5 and correct or not from the batch, the fg
        fraction and driver per rule from ``record`` and the batch's foreground (none without either)."""
        from covar_harness.attribution.overlays import Caption  # lazy: as above

        classnames = list((self.ctx.classnames if self.ctx else None) or batch.samples.classnames or [])
        label, pred = int(batch.labels[r]), batch.pred(r)
        if batch.top is not None:
            top = [int(i) for i in batch.top[r][:5]]
        else:
            top = [int(i) for i in batch.logits[r].topk(min(5, batch.logits.shape[-1])).indices]
        index = batch.indices[r]
        fg = None if batch.fg is None else batch.fg[r]
        return Caption(
            pred=class_name(classnames, pred),
            top5=[class_name(classnames, i) for i in top],
            label=class_name(classnames, label),
            correct=label == pred,
            rules={} if fg is None or record is None else self.drivers(index, label, pred, record, fg),
            notes=[f"file: {batch.samples.samples[index].id}"],
        )

    def drivers(
        self, index: int, label: int, pred: int, record: AttributionRecord, fg: Any
    ) -> dict[str, tuple[float | None, str | None]]:
        """{rule: (fg score, driver)} as the diagnosis step will log them (its settings, ``--driver-rule`` order);
        empty when that cannot be computed (the caption is decoration: it must not stop the maps)."""
        from dataclasses import replace  # lazy: with the two below, for the caption's diagnosis re-run

        import numpy as np  # lazy: --help imports this module without numpy

        from covar_harness.diagnosis.rules import DiagnosisSettings, Evidence, diagnose_sample  # lazy: as above

        options = self.ctx.options if self.ctx is not None else None
        settings = getattr(options, "diagnosis", None) or DiagnosisSettings()
        try:
            evidence = Evidence.of(record)
            outcome = diagnose_sample(
                index, label, pred, evidence, np.asarray(fg, dtype=np.float64), None, replace(settings, null_draws=0)
            )
        except Exception:  # noqa: BLE001 - a rule that cannot read this record: caption what is known
            return {}
        return {name: (o.score, o.driver) for name, o in outcome.outcomes.items()}


def class_name(classnames: list[str], i: int) -> str:
    """Class ``i``'s name (its number when the list does not have it); the caption makes it plain text."""
    return classnames[i] if 0 <= i < len(classnames) else str(i)
