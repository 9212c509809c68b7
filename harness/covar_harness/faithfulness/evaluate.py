"""One model x task: every method's importance maps, curves and localisation, per sample.

The pair opens as a run's does, by its task kind (``run.evaluator.open_task_pair``: data, ``--limit``, class names,
templates and class embeddings; a retrieval task as a classification pair whose class i is image i's caption set
and whose label is i, so attribution explains the paired caption). Faithfulness refuses what it cannot perturb: a
class-mapped pair (one line). The images go through the run's one per-sample pass (``run.pair.image_pass``): one
forward per batch, then the pipeline's steps on the same batch, the mask step (``masks.step.MaskStep`` with the
task's own masks, mapped onto the patch grid as in a run) and the curves (``faithfulness.step.CurveStep``).
Finished batches go to the pair's part file (``run.partfiles``), so an interrupted pair resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covar_harness.faithfulness.settings import FaithfulnessSettings
from covar_harness.faithfulness.step import CurveStep, MethodRun
from covar_harness.faithfulness.summary import result_file
from covar_harness.masks.step import MaskStep
from covar_harness.models.adapter import logit_scale
from covar_harness.pipeline.contract import PairContext, Pipeline
from covar_harness.run.evaluator import open_task_pair
from covar_harness.run.options import RunOptions
from covar_harness.run.pair import PairRequest, image_pass
from covar_harness.run.progress import Reporter

if TYPE_CHECKING:
    import torch

    from covar_harness.attribution.base import Attributor
    from covar_harness.attribution.settings import CCISettings
    from covar_harness.catalog.plugin_manager import Catalog
    from covar_harness.catalog.taskconfig import TaskConfig
    from covar_harness.data.samples import SampleSet
    from covar_harness.run.text_cache import ClassifierCache


@dataclass
class PairData:
    """What the pass over one task needs: the task, its samples (``--limit`` applied), class embeddings (D, C),
    the catalogue (where the masks' ``dataset`` segmenter comes from) and the model spec (the part file's)."""

    task: TaskConfig
    samples: SampleSet
    classnames: list[str]
    classifier: torch.Tensor
    catalog: Catalog
    n_failed: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. why the token-removal curves were not run
    settings: dict[str, Any] = field(default_factory=dict)  # recorded with the curve settings (retrieval's text)
    model_spec: str | None = None


def open_pair_data(
    adapter: Any,
    cfg: TaskConfig,
    catalog: Catalog,
    classifiers: ClassifierCache,
    options: RunOptions,
    spec: str,
    reporter: Reporter | None = None,
) -> PairData:
    """The pair of the task's kind as the run opens it (``open_task_pair``); what it explains beyond class names
    (a retrieval pair's caption sets) goes to the result's settings."""

    pair = open_task_pair(PairRequest(adapter, cfg, catalog, options, classifiers, reporter or Reporter(), spec))
    ctx = pair.ctx
    if ctx.class_map is not None:  # scores are max-logit buckets there: no one linear classifier to perturb
        raise ValueError(
            f"task {cfg.task!r} maps a {len(ctx.class_map.classnames)}-way classifier onto its labels; the "
            "faithfulness curves need a classifier over the task's own classes (for ImageNet-9: imagenet9-9way/*)"
        )
    assert ctx.classifier is not None
    return PairData(
        cfg, ctx.samples, ctx.classnames, ctx.classifier, catalog, settings=dict(pair.explained), model_spec=spec
    )


def pair_part(output_dir: Path, model: str, task: str) -> Path:
    """The pair's part file, ``<model>/<task>/curves.part`` beside its results (no method's JSON can take that
    name); removed once the results are written."""
    return result_file(output_dir, model, task, "curves").with_suffix(".part")


def run_pair(
    adapter: Any,
    data: PairData,
    methods: Sequence[str | type[Attributor]],
    settings: FaithfulnessSettings,
    cci: CCISettings,
    options: RunOptions,
    part: Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, MethodRun]:
    """Every method (a name, or an Attributor class such as RISE with its settings) over every sample of the
    pair, in the run's one pass over the images (``image_pass``: one forward per batch, the masks, then every
    method's curves on the same batch); keyed by method name. Unreadable images are counted in ``data.n_failed``;
    notes (no token removal, unreadable masks) go to ``data.notes``. ``part``: the pair's part file (every
    ``options.checkpoint_every`` batches; hold its ``partfiles.pair_lock``), resumed from when its header, the
    curve settings included, matches."""

    curves = CurveStep(methods, settings, cci, softmax_temperature(adapter, settings)[0])
    pipeline = Pipeline([MaskStep("dataset"), curves])
    ctx = PairContext(
        adapter,
        data.task,
        data.samples,
        data.classnames,
        model_spec=data.model_spec,
        catalog=data.catalog,
        options=options,
        reporter=reporter or Reporter(),  # the command's bars; silent when called as a library
        classifier=data.classifier,
    )
    pipeline.start(ctx)
    _, failures = image_pass(ctx, pipeline, part)
    data.n_failed += len(failures)
    done = pipeline.finish()[-1]
    data.notes += done.summary.notes
    return curves.method_runs(done.records)


def softmax_temperature(adapter: Any, settings: FaithfulnessSettings) -> tuple[float, str]:
    """(T, where it comes from) of the softmax score: ``--temperature`` when given, else the model's own logit
    scale (``models.adapter.logit_scale``; 100 with a note when the model exposes none). Recorded per result in
    ``settings.temperature`` / ``settings.temperature_from``."""
    if settings.temperature is not None:
        return settings.temperature, "--temperature"
    return logit_scale(adapter)
