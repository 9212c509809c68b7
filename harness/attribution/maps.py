"""``--save-maps``: one overlay PNG per attributed sample (``covar_harness.overlays`` draws them), under
``SAVE_MAPS/<model slug>/<task slug>``, the slugs of the result folder. A map that cannot be written (full or
read-only disk) stops the maps of that pair with a note; the records and the result file are unaffected.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from covar_harness.adapter import adapter_name
from covar_harness.registry import UsageError

if TYPE_CHECKING:
    from covar_harness.attribution.engine import Attribution
    from covar_harness.pipeline import Batch, PairContext


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


class MapWriter:
    """The overlay maps of one step: the root folder (checked when built), and per pair the count and the error
    that stopped them, if any."""

    def __init__(self, root: str | Path):
        self.root = check_maps_dir(root)
        self.ctx: "PairContext | None" = None
        self.n_maps = 0
        self.error: str | None = None

    def start(self, ctx: "PairContext") -> None:
        self.ctx, self.n_maps, self.error = ctx, 0, None

    def folder(self) -> Path:
        """``ROOT/<model slug>/<task slug>``: the slugs (``results.slug``) of the model spec (the adapter's name
        only when no spec was given) and the task."""
        from covar_harness import results

        assert self.ctx is not None, "start() first"
        model = self.ctx.model_spec or adapter_name(self.ctx.adapter)
        task = getattr(self.ctx.task, "task", None) or "task"
        return self.root / results.slug(model) / results.slug(task)

    def write(self, batch: "Batch", rows: list[int], result: "Attribution") -> None:
        """One overlay PNG per attributed row of the batch (``rows``, in ``result`` order)."""
        from covar_harness import overlays, results
        from covar_harness.console import safe

        if self.error is not None or self.ctx is None:
            return
        adapter, folder = self.ctx.adapter, self.folder()
        grid = tuple(adapter.patch_grid)
        imp = result.patch_importance()
        for j, r in enumerate(rows):
            index = batch.indices[r]
            mask = overlays.mask_in_input_frame(batch.samples, index, adapter.preprocess,
                                                tuple(batch.pixels.shape[-2:]))
            stem = results.slug(Path(batch.samples.samples[index].id).stem)
            try:
                overlays.save_overlay(folder / f"{index:06d}_{stem}.png", batch.pixels[r], imp[j].view(grid),
                                      result.assignments[j].view(grid), mask, adapter.preprocess)
            except (OSError, ValueError) as exc:
                self.error = safe(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
                return
            self.n_maps += 1
