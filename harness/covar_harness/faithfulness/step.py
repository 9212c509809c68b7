"""The faithfulness step: every method's importance maps, curves and localisation for one batch, as a pipeline step
(``pipeline.contract.Step``) of the run's one per-sample pass (``run.pair.image_pass``).

The pass forwards each batch once (the zero-shot embeddings this step explains from, ``Batch.image_emb``); the mask
step before it (``masks.step.MaskStep`` with the task's own masks, ``dataset``) gives each sample's foreground on
the patch grid, mapped as in a run (a mask stored at another resolution than its image is resized to it first).
Per batch the step returns one :class:`CurveRecord` per sample; :meth:`CurveStep.method_runs` turns the records
into each method's rows. A method that fails on the pair is reported (its ``MethodRun.error``), not fatal, and
runs on no later batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from covar_harness.attribution.base import find_attributor
from covar_harness.attribution.engine import sample_seed
from covar_harness.attribution.patches import importance_order
from covar_harness.common.console import one_line
from covar_harness.faithfulness.curves import Scorer
from covar_harness.faithfulness.importance import importance_maps
from covar_harness.faithfulness.localisation import pointing_energy, relevance_rank_accuracy
from covar_harness.faithfulness.protocols import PROTOCOLS, CurveInput
from covar_harness.masks.step import foreground, upstream_masks
from covar_harness.models.adapter import AdapterContractError, attribution_support, patch_grid
from covar_harness.pipeline.contract import PairContext, SampleRecord, Step, StepSummary

if TYPE_CHECKING:
    from covar_harness.attribution.base import Attributor
    from covar_harness.attribution.settings import CCISettings
    from covar_harness.faithfulness.settings import FaithfulnessSettings
    from covar_harness.pipeline.contract import Batch


@dataclass
class MethodRun:
    """Per-sample rows of one method on one pair (or why it could not run)."""

    method: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    x: dict[str, list[float]] = field(default_factory=dict)  # curve name -> fractions of patches at each point


@dataclass(frozen=True, eq=False)
class CurveRecord(SampleRecord):
    """One sample's row per method (curves, AUCs, localisation: a line of that method's sample file); a method
    that had failed by this batch has none. Adds nothing to a run's sample log: faithfulness writes its own."""

    index: int
    rows: dict[str, dict[str, Any]]

    def log_fields(self) -> dict[str, Any]:
        return {}


@dataclass
class _Explained:
    """What every method of one batch shares: the explained class, its score, each image's seed."""

    target: torch.Tensor  # (B,)
    labels: torch.Tensor  # (B,)
    emb: torch.Tensor  # (B, D) normalised, on CPU
    scorer: Scorer
    seeds: list[int]


class CurveStep(Step):
    """Deletion / insertion curves and localisation of every method's maps, batch by batch."""

    name = "faithfulness"
    # restored on resume (``run.partfiles``): the methods that failed (not asked again), the curves' fractions
    resumed = ("errors", "x")

    def __init__(
        self,
        methods: Sequence[str | type[Attributor]],
        settings: FaithfulnessSettings,
        cci: CCISettings,
        temperature: float,
    ):
        self.classes = {find_attributor(m).name: find_attributor(m) for m in methods}
        self.settings, self.cci, self.temperature = settings, cci, temperature
        self.errors: dict[str, str] = {}  # method -> why it failed on this pair
        self.x: dict[str, dict[str, list[float]]] = {name: {} for name in self.classes}
        self.notes: list[str] = []
        self.ctx: PairContext | None = None

    def start(self, ctx: PairContext) -> None:
        """Notes why there are no token-removal curves; asks the mask step for the task's masks when it has any
        (localisation), on a model with a patch grid to map them onto."""
        self.ctx, self.errors, self.notes = ctx, {}, []
        self.x = {name: {} for name in self.classes}
        removal, why = attribution_support(ctx.adapter)
        if self.settings.token_removal and not removal:
            self.notes.append(f"no token-removal curves: {why}")
        masks = upstream_masks(ctx, self)
        if masks is not None and ctx.samples.has_masks and _has_patch_grid(ctx.adapter):
            masks.request()

    def run_settings(self) -> dict[str, Any]:
        """Every setting that decides the records (a part file made with others is not resumed): the methods with
        their own settings (RISE's masks), the curve settings, CCI's, and the softmax temperature."""
        methods = {name: _own_settings(cls) for name, cls in self.classes.items()}
        return {"methods": methods, "settings": asdict(self.settings), "cci": asdict(self.cci), "T": self.temperature}

    def process(self, batch: Batch) -> list[CurveRecord]:
        assert self.ctx is not None, "start() first"
        shared = self._explained(batch)
        rows: list[dict[str, dict[str, Any]]] = [{} for _ in batch.indices]
        for name, method in self.classes.items():
            if name in self.errors:
                continue
            try:
                for row, by_method in zip(self._rows(batch, shared, method, self.x[name]), rows):
                    by_method[name] = row
            except Exception as exc:  # noqa: BLE001 - a method that cannot explain this model is reported, not fatal
                self.errors[name] = f"{type(exc).__name__}: {one_line(exc)}"
        return [CurveRecord(i, by_method) for i, by_method in zip(batch.indices, rows)]

    def finish(self, records: list[SampleRecord]) -> StepSummary:
        """The notes (no token removal; masks that could not be read); the result files are the command's."""
        assert self.ctx is not None, "start() first"
        masks = upstream_masks(self.ctx, self)
        notes = list(self.notes)
        if masks is not None and masks.active:
            about = masks.describe()
            if masks.failed:
                notes.append(f"no localisation: {masks.failed}")
            elif about.get("n_unreadable_masks"):
                notes.append(
                    f"{about['n_unreadable_masks']} mask(s) could not be read (first: {about['first_unreadable']}); "
                    "those images have no localisation"
                )
        return StepSummary(notes=notes)

    def method_runs(self, records: Sequence[SampleRecord]) -> dict[str, MethodRun]:
        """Every method's rows in sample order, keyed by method name; a method that failed has its error and
        no rows (no partial summary)."""
        runs = {name: MethodRun(name, error=self.errors.get(name, ""), x=self.x[name]) for name in self.classes}
        for record in records:
            assert isinstance(record, CurveRecord)
            for name, row in record.rows.items():
                if not runs[name].error:
                    runs[name].rows.append(row)
        return runs

    def _explained(self, batch: Batch) -> _Explained:
        assert self.ctx is not None
        classifier = self.ctx.classifier
        assert classifier is not None
        emb = batch.image_emb.float().cpu()
        labels = batch.labels
        target = (emb @ classifier).argmax(dim=-1) if self.settings.target == "pred" else labels
        scorer = Scorer(classifier, target, self.settings.score, self.temperature)
        samples = batch.samples.samples
        seeds = [sample_seed(self.cci.seed, samples[i].id) for i in batch.indices]
        return _Explained(target, labels, emb, scorer, seeds)

    def _rows(
        self, batch: Batch, shared: _Explained, method: type[Attributor], x: dict[str, list[float]]
    ) -> list[dict[str, Any]]:
        """One method's rows for the batch; ``x`` gets the fractions at each curve point."""
        assert self.ctx is not None and self.ctx.classifier is not None
        adapter, pixels, s = self.ctx.adapter, batch.pixels, self.settings
        text = self.ctx.classifier[:, shared.target].T.contiguous()
        with torch.no_grad():
            maps = importance_maps(method, adapter, pixels, shared.emb, text, shared.target, shared.seeds, self.cci)
        random_ties = s.ties == "random"
        order = importance_order(maps, shared.seeds if random_ties else None)
        inp = CurveInput(adapter, pixels, maps, order, shared.seeds, random_ties, shared.scorer, s.steps,
                         s.replacement, s.blur_sigma, s.token_removal)  # fmt: skip
        curves = PROTOCOLS[s.protocol]().curves(inp)
        for suffix, c in curves.items():
            x[f"deletion{suffix}"], x[f"insertion{suffix}"] = c.x_deletion.tolist(), c.x_insertion.tolist()
        aucs = {suffix: c.aucs() for suffix, c in curves.items()}  # (B,) each, once per batch
        return [
            self._row(batch, shared, b, maps[b].numpy(), order[b].numpy(), curves, aucs)
            for b in range(len(batch.indices))
        ]

    def _row(
        self,
        batch: Batch,
        shared: _Explained,
        b: int,
        imp: np.ndarray,
        order: np.ndarray,
        curves: dict[str, Any],
        aucs: dict[str, tuple[np.ndarray, np.ndarray]],
    ) -> dict[str, Any]:
        index = batch.indices[b]
        sample = batch.samples.samples[index]
        row: dict[str, Any] = {
            "index": index,
            "id": sample.id,
            "source_id": sample.meta.get("source_id"),
            "label": int(shared.labels[b]),
            "target": int(shared.target[b]),
        }
        for suffix, c in curves.items():
            d_auc, i_auc = aucs[suffix]
            row[f"deletion{suffix}_auc"], row[f"insertion{suffix}_auc"] = float(d_auc[b]), float(i_auc[b])
            row[f"deletion{suffix}_curve"] = [float(v) for v in c.deletion[b]]
            row[f"insertion{suffix}_curve"] = [float(v) for v in c.insertion[b]]
        fg = foreground(batch, b)
        row["pointing_energy"] = None if fg is None else pointing_energy(imp, fg)
        row["relevance_rank_accuracy"] = (
            None if fg is None else relevance_rank_accuracy(imp, fg, self.settings.mask_threshold, order)
        )
        return row


def _has_patch_grid(adapter: Any) -> bool:
    """Whether the model has a patch grid that masks can be mapped onto (without one no method has a map)."""
    try:
        patch_grid(adapter)
    except AdapterContractError:
        return False
    return True


def _own_settings(method: type[Attributor]) -> dict[str, Any] | None:
    """A method's own settings (``RISE.with_settings``), as plain data; None for a method without any."""
    own = getattr(method, "settings", None)
    return asdict(own) if is_dataclass(own) and not isinstance(own, type) else None
